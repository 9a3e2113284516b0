"""transformers' conventions beyond its common tests: configs validated on assignment and at save, backbone kwargs,
sub-configs that receive dtype / attn_implementation, checkpointing refused by name for a backbone that cannot,
the library's own loading paths, saved files readable by others, the processor's standard kwargs, and a batch of
different-size images giving each image its own label map."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norms, tiny_config
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, ResNetConfig

from fpn_seg import SemanticFPNConfig, SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment

RESNET = {
    "embedding_size": 8, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "layer_type": "basic",
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}  # fmt: skip


def resnet_model_config(**kwargs) -> SemanticFPNConfig:
    return SemanticFPNConfig(
        backbone_config=ResNetConfig(**RESNET), neck_channels=16, head_channels=8, id2label={0: "a", 1: "b"}, **kwargs
    )


# ------------------------------------------------------------------------------------------------ configs


def test_another_backbone_round_trips_with_dtype_and_attn_implementation(tmp_path):
    SemanticFPNForSemanticSegmentation(resnet_model_config()).save_pretrained(tmp_path)
    model = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="eager")
    backbone_config = model.config.backbone_config
    assert model.dtype == torch.bfloat16 and model.config.dtype == backbone_config.dtype == torch.bfloat16
    assert model.config._attn_implementation == backbone_config._attn_implementation == "eager"
    again = SemanticFPNConfig.from_dict(model.config.to_dict())
    assert type(again.backbone_config) is ResNetConfig and again.backbone_config.dtype == torch.bfloat16
    assert again.to_dict() == model.config.to_dict()
    assert SemanticFPNConfig.sub_configs == {"backbone_config": AutoConfig}


def test_backbone_kwargs_are_consumed_or_refused_with_the_reason(tmp_path):
    ResNetConfig(**RESNET).save_pretrained(tmp_path / "resnet")
    config = SemanticFPNConfig(
        backbone=str(tmp_path / "resnet"), backbone_kwargs={"out_features": ["stage1", "stage2", "stage3", "stage4"]},
        id2label={0: "a", 1: "b"},
    )  # fmt: skip
    assert type(config.backbone_config) is ResNetConfig and config.backbone_config.hidden_sizes == [8, 16, 16, 32]
    assert not hasattr(config, "backbone") and not hasattr(config, "backbone_kwargs")  # consumed, not stored
    for kwargs, message in [
        ({"use_pretrained_backbone": True}, "does not take use_pretrained_backbone=True: load pretrained backbone"),
        ({"use_timm_backbone": True}, "use_timm_backbone=True: timm backbones are not supported"),
        ({"backbone_kwargs": {"depth": 18}}, "backbone_kwargs apply to backbone=..."),
        ({"backbone": str(tmp_path / "resnet"), "backbone_config": ResNetConfig()}, "backbone_config or backbone, not both"),
    ]:
        with pytest.raises(ValueError, match=message):
            SemanticFPNConfig(id2label={0: "a", 1: "b"}, **kwargs)


def test_fields_are_checked_on_assignment_and_the_config_again_at_save(tmp_path):
    config = tiny_config()
    with pytest.raises(StrictDataclassFieldValidationError, match="loss_average"):
        config.loss_average = "mean"
    with pytest.raises(StrictDataclassFieldValidationError, match="neck_channels"):
        config.neck_channels = "32"
    config.ignore_index = 1  # a class id: each field is well typed, the whole is not
    with pytest.raises(StrictDataclassClassValidationError, match="ignore_index=1 is a class id"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(StrictDataclassClassValidationError, match="feature_strides must double"):
        tiny_config(feature_strides=[4, 8, 12, 32])
    with pytest.raises(StrictDataclassClassValidationError, match="label_map maps raw values to \\[7\\]"):
        tiny_config(num_labels=4, label_map={1: 0, 2: 7})


# ------------------------------------------------------------------------------------------------ modeling


def test_checkpointing_a_backbone_that_cannot_is_refused_by_name():
    model = SemanticFPNForSemanticSegmentation(resnet_model_config())
    with pytest.raises(ValueError, match=r"backbone ResNetBackbone \(model_type 'resnet'\) does not support it"):
        model.activation_checkpointing_enable()
    assert not model.is_activation_checkpointing


def test_the_library_loading_paths_get_the_report_and_a_plain_load_stays_strict(tmp_path):
    config = tiny_config()
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(config)).eval()
    state_dict = model.state_dict()
    loaded = SemanticFPNForSemanticSegmentation.from_pretrained(None, config=config, state_dict=state_dict).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)

    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["decode_head.extra.weight"] = torch.ones(1)
    del weights["decode_head.classifier.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"decode_head.classifier.bias"}
    assert set(info["unexpected_keys"]) == {"decode_head.extra.weight"}
    with pytest.raises(ValueError, match="lacks 1 weights .* holds 1 weights the model does not have"):
        SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path)


def test_saved_files_are_readable_by_others(tmp_path):
    umask = os.umask(0o022)
    try:
        config = tiny_config()
        SemanticFPNForSemanticSegmentation(config).save_pretrained(tmp_path)
        SemanticFPNImageProcessor.from_model_config(config).save_pretrained(tmp_path)
    finally:
        os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == modes["preprocessor_config.json"] == 0o644, modes


# ------------------------------------------------------------------------------------------------ the processor


def test_standard_images_kwargs_are_taken():
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    processor = SemanticFPNImageProcessor(do_resize=False)
    four = processor(rgba, do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4)["pixel_values"]
    assert four.shape == (1, 4, 20, 30) and torch.equal(four[0].permute(1, 2, 0), torch.from_numpy(rgba).float())
    assert processor(rgba)["pixel_values"].shape == (1, 3, 20, 30)  # RGB by default: alpha dropped
    ambiguous = rgba[:3, :5, :3].copy()  # (3, 5, 3): channels first or last?
    assert processor(ambiguous, input_data_format="channels_first")["pixel_values"].shape == (1, 3, 5, 3)
    assert processor(ambiguous, input_data_format="channels_last")["pixel_values"].shape == (1, 3, 3, 5)
    assert SemanticFPNImageProcessor.from_dict({"scale": [64, 32]}, do_convert_rgb=False).do_convert_rgb is False
    assert processor(rgba, size={"height": 10, "width": 12})["pixel_values"].shape == (1, 3, 20, 30)  # do_resize off
    resized = processor(rgba, do_resize=True, size={"shortest_edge": 10, "longest_edge": 100}, resample=2)
    assert resized["pixel_values"].shape == (1, 3, 10, 15)
    with pytest.raises(ValueError, match="crop_size does not apply to Semantic FPN: mmseg's test pipeline does not crop"):
        processor(rgba, crop_size={"height": 8, "width": 8})
    with pytest.raises(ValueError, match="resample=0 is not supported"):
        processor(rgba, resample=0)
    with pytest.raises(ValueError, match="data_format='channels_last' is not supported"):
        processor(rgba, data_format="channels_last")
    assert processor(rgba, device="cpu")["pixel_values"].device.type == "cpu"


def test_segmentation_scores_are_the_resized_logits():
    processor = SemanticFPNImageProcessor()
    logits = torch.randn(2, 5, 12, 20)
    outputs = processor.post_process_semantic_segmentation(
        {"logits": logits}, target_sizes=[(24, 40), (6, 10)], return_segmentation_scores=True
    )
    expected = torch.nn.functional.interpolate(logits[1:], size=(6, 10), mode="bilinear", align_corners=False)[0]
    assert torch.equal(outputs[1].segmentation_scores, expected)
    assert torch.equal(outputs[1].segmentation, expected.argmax(0)) and outputs[0].segmentation.shape == (24, 40)


def test_a_batch_of_different_sizes_gives_each_image_its_own_label_map():
    torch.manual_seed(0)
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config())).eval()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 50, 3), (30, 70, 3), (48, 48, 3))]
    inputs = processor(images)
    assert inputs["pixel_values"].shape[0] == 3 and "pixel_mask" in inputs
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [image.shape[:2] for image in images]
    batched = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes, return_segmentation_scores=True)
    for image, result in zip(images, batched):
        with torch.no_grad():
            alone = model(**processor(image))
        (expected,) = processor.post_process_semantic_segmentation(
            alone, target_sizes=[image.shape[:2]], return_segmentation_scores=True
        )
        assert torch.equal(result.segmentation_scores, expected.segmentation_scores)  # bit for bit
        assert torch.equal(result.segmentation, expected.segmentation)
        assert torch.equal(result.segmentation, segment(model, processor, image, optimize=False)[0])


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"images": np.zeros((0, 0, 3), np.uint8)}, r"numpy image of shape \(0, 0, 3\) is empty"),
        (
            {"images": np.zeros((8, 10, 3), np.uint8), "segmentation_maps": np.zeros((8, 10, 3), np.uint8)},
            r"shape \(8, 10, 3\) looks like a colour-coded mask, expected class indices",
        ),
    ],
    ids=["empty-image", "colour-label-array"],
)
def test_bad_arrays_are_named(inputs, message):
    with pytest.raises(ValueError, match=message):
        SemanticFPNImageProcessor()(**inputs)
    if "segmentation_maps" not in inputs:
        with pytest.raises(ValueError, match=message):
            segment(SemanticFPNForSemanticSegmentation(tiny_config()), SemanticFPNImageProcessor(), inputs["images"])


def test_saved_processor_keeps_an_explicit_none(tmp_path):
    processor = SemanticFPNImageProcessor(scale=[64, 32], do_normalize=None)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["do_normalize"] is None and SemanticFPNImageProcessor.from_pretrained(tmp_path).do_normalize is None
    assert "device" not in saved and "input_data_format" not in saved  # per-call options are not saved
