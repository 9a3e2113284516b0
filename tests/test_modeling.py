"""The model against the real mmsegmentation, and as a transformers model (config, Auto classes, saving, training)."""

import json
import textwrap

import numpy as np
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
from conftest import FIXTURES, REFERENCE_MODELS, load_reference, reference_config, run_without_fpn_seg, tiny_config
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModelForSemanticSegmentation,
    ConvNextConfig,
    ResNetConfig,
)

from fpn_seg import (
    PRESETS,
    ResNetV1cBackbone,
    ResNetV1cConfig,
    SemanticFPNConfig,
    SemanticFPNForSemanticSegmentation,
    SemanticFPNImageProcessor,
)
from fpn_seg.conversion import CheckpointMismatchError, convert_mmseg_state_dict
from fpn_seg.presets import preset_config


def reference_model(name: str) -> SemanticFPNForSemanticSegmentation:
    _, checkpoint = load_reference(name)
    model = SemanticFPNForSemanticSegmentation(reference_config(name)).eval()
    model.load_state_dict(convert_mmseg_state_dict(checkpoint["state_dict"], model), strict=True)
    return model


# ---------------------------------------------------------------------------------------------------- mmseg parity


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_logits_match_mmsegmentation(name):
    arrays, _ = load_reference(name)
    model = reference_model(name)
    pixel_values = torch.from_numpy(arrays["pixel_values"])
    with torch.no_grad():
        features = model.backbone(pixel_values).feature_maps
        head_logits = model.decode_head(model.neck(list(features)))
        logits = model(pixel_values).logits

    assert head_logits.shape == arrays["head_logits"].shape
    assert logits.shape == arrays["logits"].shape
    assert (head_logits - torch.from_numpy(arrays["head_logits"])).abs().max() <= 1e-4
    assert (logits - torch.from_numpy(arrays["logits"])).abs().max() <= 1e-4
    np.testing.assert_array_equal(logits.argmax(1).numpy(), arrays["pred"])


def test_mapping_is_strict():
    _, checkpoint = load_reference("fpn_r50_c19_97x130_w16_b2")
    model = SemanticFPNForSemanticSegmentation(reference_config("fpn_r50_c19_97x130_w16_b2"))
    state_dict = dict(checkpoint["state_dict"])
    state_dict["auxiliary_head.conv_seg.weight"] = torch.zeros(1)
    del state_dict["neck.fpn_convs.2.conv.bias"]
    with pytest.raises(CheckpointMismatchError) as error:
        convert_mmseg_state_dict(state_dict, model)
    assert "auxiliary_head.conv_seg.weight" in str(error.value)
    assert "neck.fpn_convs.2.bias" in str(error.value)
    # DataParallel prefixes are stripped.
    prefixed = {f"module.{key}": value for key, value in checkpoint["state_dict"].items()}
    assert len(convert_mmseg_state_dict(prefixed, model)) == len(checkpoint["state_dict"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_official_checkpoint_layout_loads_strictly(preset):
    """Every key and shape of the four official checkpoints fits our full-size models (built on the meta device)."""
    layout_name = {
        "fpn_r50_512x1024_80k_cityscapes": "fpn_r50_cityscapes",
        "fpn_r101_512x1024_80k_cityscapes": "fpn_r101_cityscapes",
        "fpn_r50_512x512_160k_ade20k": "fpn_r50_ade20k",
        "fpn_r101_512x512_160k_ade20k": "fpn_r101_ade20k",
    }[preset]
    layout = json.loads((FIXTURES / "official_state_dict_layout.json").read_text())[layout_name]
    state_dict = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for key, (shape, dtype) in layout.items()
    }
    with torch.device("meta"):
        model = SemanticFPNForSemanticSegmentation(preset_config(preset))
    mapped = convert_mmseg_state_dict(state_dict, model)
    assert len(mapped) == len(state_dict) == len(model.state_dict())
    model.load_state_dict(mapped, strict=True, assign=True)


# ---------------------------------------------------------------------------------------------------- configuration


def test_presets_carry_class_names_and_label_policy():
    cityscapes = preset_config("fpn_r101_512x1024_80k_cityscapes")
    assert cityscapes.backbone_config.depth == 101 and cityscapes.num_labels == 19
    assert cityscapes.id2label[0] == "road" and cityscapes.id2label[18] == "bicycle"
    assert not cityscapes.reduce_labels
    ade = preset_config("fpn_r50_512x512_160k_ade20k")
    assert ade.num_labels == 150 and ade.id2label[0] == "wall" and ade.reduce_labels
    with pytest.raises(ValueError, match="Unknown Semantic FPN preset 'fpn_r18'.*fpn_r50_512x1024_80k_cityscapes"):
        preset_config("fpn_r18")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone_config": {"model_type": "resnet_v1c", "depth": 42}}, "depth=42 is not supported"),
        ({"loss_average": "pixels"}, r"loss_average' expected one of \('all_pixels', 'non_ignored'\), got pixels"),
        ({"ignore_index": 2}, "ignore_index=2 is a class id"),
        ({"feature_strides": [4, 8, 16]}, "feature_strides has 3 entries"),
    ],
)
def test_config_validation(kwargs, message):
    base = {"id2label": {i: str(i) for i in range(4)}}
    with pytest.raises(StrictDataclassError, match=message):  # transformers' validation errors (@strict)
        SemanticFPNConfig(**base, **kwargs)


def test_encode_labels_policy():
    config = tiny_config(num_labels=3, reduce_labels=True)
    raw = torch.tensor([[0, 1, 2, 3, 255]])
    assert SemanticFPNImageProcessor.from_model_config(config).encode_labels(raw).tolist() == [[255, 0, 1, 2, 255]]
    mapped = tiny_config(num_labels=3, label_map={7: 0, 8: 1, 26: 2})
    mapped = SemanticFPNImageProcessor.from_model_config(mapped)
    assert mapped.encode_labels(torch.tensor([[7, 8, 26, 0, 33, 255]])).tolist() == [[0, 1, 2, 255, 255, 255]]


def test_config_json_round_trip(tmp_path):
    config = tiny_config(num_labels=5, label_map={1: 0, 2: 1})
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SemanticFPNConfig)
    assert isinstance(loaded.backbone_config, ResNetV1cConfig)
    assert loaded.backbone_config.depth == 18 and loaded.backbone_config.base_channels == 8
    assert loaded.label_map == {1: 0, 2: 1} and loaded.num_labels == 5
    assert loaded.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]


# ---------------------------------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("depth, block_channels", [(18, 8), (34, 8), (50, 32), (101, 32), (152, 32)])
def test_backbone_depths(depth, block_channels):
    config = ResNetV1cConfig(depth=depth, stem_channels=8, base_channels=8)
    backbone = AutoBackbone.from_config(config)
    assert isinstance(backbone, ResNetV1cBackbone)
    assert backbone.channels == [block_channels * 2**i for i in range(4)]
    features = backbone(torch.randn(1, 3, 33, 45)).feature_maps
    assert [tuple(f.shape[-2:]) for f in features] == [(9, 12), (5, 6), (3, 3), (2, 2)]


def test_backbone_variants_v1b_v1d_keys():
    v1b = ResNetV1cBackbone(ResNetV1cConfig(depth=18, deep_stem=False, stem_channels=8, base_channels=8))
    assert "conv1.weight" in v1b.state_dict() and not any(k.startswith("stem.") for k in v1b.state_dict())
    v1d = ResNetV1cBackbone(ResNetV1cConfig(depth=50, avg_down=True, stem_channels=8, base_channels=8))
    keys = v1d.state_dict()
    assert "layer2.0.downsample.1.weight" in keys and "layer2.0.downsample.2.running_var" in keys
    assert "layer1.0.downsample.0.weight" in keys  # stride 1: no pooling in stage 1
    assert v1d.eval()(torch.randn(1, 3, 32, 32)).feature_maps[-1].shape == (1, 256, 1, 1)


def test_norm_eval_and_frozen_stages():
    backbone = ResNetV1cBackbone(
        ResNetV1cConfig(depth=18, stem_channels=8, base_channels=8, norm_eval=True, frozen_stages=1)
    )
    backbone.train()
    assert all(not m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    running_mean = backbone.layer3[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(backbone.layer3[0].bn1.running_mean, running_mean)


def test_frozen_stages_stay_frozen_after_loading(tmp_path):
    """Loading replaces the parameters that `__init__` froze; the stem and stage 1 must stay out of training."""
    config = tiny_config()
    config.backbone_config.frozen_stages = 1
    SemanticFPNForSemanticSegmentation(config).save_pretrained(tmp_path)
    model = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path)
    frozen = [*model.backbone.stem.parameters(), *model.backbone.layer1.parameters()]
    assert frozen and not any(parameter.requires_grad for parameter in frozen)
    model.train()(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 4, (2, 32, 32))).loss.backward()
    assert all(parameter.grad is None for parameter in frozen)
    assert all(parameter.grad is not None for parameter in model.backbone.layer2.parameters())


@pytest.mark.parametrize(
    "backbone_config",
    [
        ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_type="basic",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        ConvNextConfig(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
        ),
    ],
    ids=["resnet", "convnext"],
)  # fmt: skip
def test_transformers_backbones(backbone_config, tmp_path):
    config = SemanticFPNConfig(
        backbone_config=backbone_config, neck_channels=16, head_channels=8, id2label={0: "a", 1: "b", 2: "c"}
    )
    model = SemanticFPNForSemanticSegmentation(config).eval()
    assert [conv.in_channels for conv in model.neck.lateral_convs] == [8, 16, 24, 32]
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(pixel_values).logits
    assert logits.shape == (1, 3, 64, 64)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- saving


def test_save_and_auto_load_round_trip(tmp_path):
    model = SemanticFPNForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        expected = model(pixel_values).logits
    model.save_pretrained(tmp_path)
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in saved and "config.json" in saved
    assert {"modeling_semantic_fpn.py", "configuration_semantic_fpn.py", "modeling_resnet_v1c.py"} <= set(saved)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"].endswith("SemanticFPNForSemanticSegmentation")

    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SemanticFPNForSemanticSegmentation)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, expected, rtol=0, atol=0)


def test_trust_remote_code_without_the_package(tmp_path):
    model_dir = tmp_path / "model"
    model = SemanticFPNForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(pixel_values).logits
    model.save_pretrained(model_dir)
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    torch.save(expected, tmp_path / "expected.pt")
    code = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForSemanticSegmentation
        model = AutoModelForSemanticSegmentation.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(torch.load({str(tmp_path / "pixel_values.pt")!r})).logits
        assert torch.equal(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        print("remote code OK")
        """
    )
    result = run_without_fpn_seg(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout


def test_different_number_of_labels_fails_clearly(tmp_path):
    SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="(?i)size mismatch|mismatch"):
        SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path, num_labels=7)
    model = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path, num_labels=7, ignore_mismatched_sizes=True)
    assert model.decode_head.classifier.out_channels == 7


def test_loaded_weights_are_not_reinitialised(tmp_path):
    model = SemanticFPNForSemanticSegmentation(tiny_config())
    with torch.no_grad():
        model.decode_head.scale_heads[1][0].norm.running_var.fill_(3.0)
        model.neck.fpn_convs[0].bias.fill_(0.5)
    model.save_pretrained(tmp_path)
    reloaded = SemanticFPNForSemanticSegmentation.from_pretrained(tmp_path)
    assert torch.all(reloaded.decode_head.scale_heads[1][0].norm.running_var == 3.0)
    assert torch.all(reloaded.neck.fpn_convs[0].bias == 0.5)


# ---------------------------------------------------------------------------------------------------- outputs, loss


def test_hidden_states_from_argument_and_config():
    model = SemanticFPNForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(pixel_values).hidden_states is None
        hidden = model(pixel_values, output_hidden_states=True).hidden_states
        model.config.output_hidden_states = True
        from_config = model(pixel_values).hidden_states
    # stem + 4 stages, then 4 FPN levels
    assert len(hidden) == 9 == len(from_config)
    assert [h.shape[1] for h in hidden] == [8, 8, 16, 32, 64, 16, 16, 16, 16]
    assert hidden[5].shape[-2:] == (16, 16) and hidden[8].shape[-2:] == (2, 2)
    tuple_output = model(pixel_values, labels=torch.zeros(1, 64, 64, dtype=torch.long), return_dict=False)
    assert tuple_output[0].dim() == 0 and tuple_output[1].shape == (1, 4, 64, 64) and len(tuple_output[2]) == 9


def test_loss_averaging_modes():
    logits = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[:, :4] = 255
    valid = labels != 255
    per_pixel = torch.nn.functional.cross_entropy(logits, labels.clamp(max=3), reduction="none")[valid]
    model = SemanticFPNForSemanticSegmentation(tiny_config())
    torch.testing.assert_close(model.segmentation_loss(logits, labels), per_pixel.sum() / labels.numel())
    model.config.loss_average = "non_ignored"
    torch.testing.assert_close(model.segmentation_loss(logits, labels), per_pixel.mean())
    # labels at another resolution: logits are resized to them
    assert model.segmentation_loss(logits, torch.zeros(2, 16, 16, dtype=torch.long)).isfinite()


def test_bad_labels_name_the_likely_cause():
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4))
    with pytest.raises(ValueError, match=r"values 4, 33 outside the 4 class ids.*reduce_labels"):
        model(torch.randn(1, 3, 64, 64), labels=torch.tensor([4, 33, 255, 0]).repeat(1, 32, 8))  # BatchNorm: >1 value


def test_sgd_steps_lower_the_loss():
    model = SemanticFPNForSemanticSegmentation(tiny_config()).train()
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :16, 16:], labels[:, 16:, :16], labels[1, 16:, 16:] = 1, 2, 3
    pixel_values = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2)[:, 1:].float() * 2 - 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = model(pixel_values, labels=labels).loss
        assert loss.isfinite()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_trainer_gradient_accumulation_scales_the_loss(tmp_path):
    """With 2 accumulation steps of batch 2, the Trainer logs the mean of the two micro-batch losses and applies the
    mean of their gradients (so `accepts_loss_kwargs=False` is honoured: no double scaling, no missing scaling)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(4, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 4, (4, 32, 32), generator=generator)
    labels[:, :8] = 255
    dataset = Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels.numpy()}).with_format("torch")
    learning_rate = 0.1

    torch.manual_seed(0)
    model = SemanticFPNForSemanticSegmentation(tiny_config(classifier_dropout=0.0))
    reference = SemanticFPNForSemanticSegmentation(tiny_config(classifier_dropout=0.0))
    reference.load_state_dict(model.state_dict())
    reference.train()
    micro_losses = [reference(pixel_values[i : i + 2], labels=labels[i : i + 2]).loss for i in (0, 2)]
    (sum(micro_losses) / 2).backward()
    classifier = reference.decode_head.classifier.weight
    expected_weight = (classifier - learning_rate * classifier.grad).detach()

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1,
        learning_rate=learning_rate, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(dataset)
    trainer.train()
    logged_loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert logged_loss == pytest.approx(sum(loss.item() for loss in micro_losses) / 2, rel=1e-4)
    torch.testing.assert_close(model.decode_head.classifier.weight.detach(), expected_weight, rtol=1e-4, atol=1e-6)


def plain_and_checkpointed(depth: int, **options) -> tuple[SemanticFPNForSemanticSegmentation, ...]:
    """Two tiny models with the same weights, in training mode, the second with gradient checkpointing on (with
    transformers' `options`: `activation_checkpointing_kwargs`, `every_n_layers`, `offload`)."""
    torch.manual_seed(0)
    plain = SemanticFPNForSemanticSegmentation(tiny_config(depth=depth, classifier_dropout=0.0)).train()
    checkpointed = SemanticFPNForSemanticSegmentation(tiny_config(depth=depth, classifier_dropout=0.0))
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable(**options)  # transformers 5.24's name of gradient_checkpointing_enable
    return plain, checkpointed.train()


CHECKPOINTING_OPTIONS = {
    "default": {},
    "reentrant": {"activation_checkpointing_kwargs": {"use_reentrant": True}},
    "every-second-block": {"every_n_layers": 2},
    "offload-to-host": {"offload": True},
}
NEEDS_ACCELERATOR = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="offloading moves activations off an accelerator (transformers pins host memory, which needs one)",
)


@pytest.mark.parametrize(
    "option", [pytest.param(name, marks=NEEDS_ACCELERATOR if "offload" in name else ()) for name in CHECKPOINTING_OPTIONS]
)
@pytest.mark.parametrize("depth", [18, 50])
def test_gradient_checkpointing_gives_the_same_step_and_recomputes_the_blocks(depth, option):
    """With each of transformers' checkpointing options: the same loss, gradients and BatchNorm statistics as a plain
    step; each checkpointed residual block runs twice (forward, then again in the backward pass), and the
    recomputation leaves the running statistics alone."""
    plain, checkpointed = plain_and_checkpointed(depth, **CHECKPOINTING_OPTIONS[option])
    blocks = [block for stage in range(1, 5) for block in getattr(checkpointed.backbone, f"layer{stage}")]
    step = CHECKPOINTING_OPTIONS[option].get("every_n_layers", 1)
    assert [block.gradient_checkpointing for block in blocks] == [index % step == 0 for index in range(len(blocks))]
    assert not any(block.gradient_checkpointing for block in plain.backbone.layer4)
    calls = []
    first_block = checkpointed.backbone.layer1[0]
    first_block.conv1.register_forward_hook(lambda *_: calls.append(1))
    pixel_values = torch.randn(2, 3, 32, 48)
    labels = torch.randint(0, 4, (2, 32, 48))
    losses = []
    for model in (plain, checkpointed):
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
    assert len(calls) == 2
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if option == "reentrant":  # each block backpropagates in its own backward call: sums in another order
            assert (a.grad - b.grad).abs().max() <= 1e-5 * a.grad.abs().max(), name
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    for (name, a), (_, b) in zip(plain.named_buffers(), checkpointed.named_buffers()):
        assert torch.equal(a, b), name
    checkpointed.eval()
    with torch.no_grad():
        checkpointed(pixel_values)
    assert len(calls) == 3  # no recomputation outside training


def test_gradient_checkpointing_under_torch_compile():
    """Dynamo cannot trace the checkpoint's context_fn: the checkpointed blocks run eagerly in the compiled model."""
    plain, checkpointed = plain_and_checkpointed(depth=18)
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    plain(pixel_values, labels=labels).loss.backward()
    torch.compile(checkpointed, backend="aot_eager")(pixel_values, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_turns_gradient_checkpointing_on(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    dataset = Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels.numpy()}).with_format("torch")
    model = SemanticFPNForSemanticSegmentation(tiny_config())
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, gradient_checkpointing=True,
        report_to=[], save_strategy="no", use_cpu=True,
    )  # fmt: skip
    result = Trainer(model=model, args=args, train_dataset=dataset).train()
    assert all(block.gradient_checkpointing for block in model.backbone.layer1)
    assert np.isfinite(result.training_loss)


def test_weights_missing_from_a_state_dict_are_initialised():
    """transformers initialises missing weights module by module (on the modules that own parameters); every conv of
    the neck and head gets PyTorch's default range, as in a model built directly (not memory left from the meta
    device)."""
    config = tiny_config()
    for model in (
        SemanticFPNForSemanticSegmentation(config),
        SemanticFPNForSemanticSegmentation.from_pretrained(None, config=config, state_dict={}),
    ):
        convs = [*model.neck.lateral_convs, *model.neck.fpn_convs, model.decode_head.classifier]
        for conv in convs:
            bound = 1 / conv.weight[0].numel() ** 0.5  # kaiming_uniform(a=sqrt(5)) and the bias share it
            assert float(conv.weight.abs().max()) <= bound and float(conv.bias.abs().max()) <= bound
            assert float(conv.weight.std()) > bound / 4  # drawn, not zeros
