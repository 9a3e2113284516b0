"""ONNX export, static int8 and the ONNX Runtime model: parity with torch (several sizes) and with the real-mmseg
reference logits, int8 accuracy on a trained model, the runner under `segment`, `fpn-seg predict` and the pipeline,
and every bad input of the deployment path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import REFERENCE_MODELS, randomise_batch_norms, reference_model, tiny_config
from PIL import Image
from transformers import SegformerConfig, SegformerForSemanticSegmentation, pipeline

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment
from fpn_seg.data import generate_street_scenes, load_cityscapes
from fpn_seg.deployment import (
    ONNX_FILE_NAME,
    QUANTIZED_FILE_NAME,
    ExportError,
    ORTModelForSemanticSegmentation,
    OVModelForSemanticSegmentation,
    OnnxFolderError,
    export_onnx,
    load_runtime,
)
from fpn_seg.deployment import export as export_module
from fpn_seg.image_reading import label_to_tensor
from fpn_seg.inference import MMSEG_MS_RATIOS
from fpn_seg.metrics import MeanIoU
from fpn_seg.optimization import fold_batch_norm
from fpn_seg.predict import main as predict_main
from fpn_seg.train import run_training

SCENE_SIZE = (48, 96)
PARITY_TOLERANCE = 1e-4
RUNTIMES = [ORTModelForSemanticSegmentation, OVModelForSemanticSegmentation]
RUNTIME_IDS = ["onnxruntime", "openvino"]


def export_main(*args: str) -> int:
    return export_module.main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deployment")


@pytest.fixture(scope="module")
def tiny(workdir) -> tuple[SemanticFPNForSemanticSegmentation, Path, Path]:
    """A tiny random model (random BatchNorm statistics) saved with its processor, and its ONNX export."""
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config())).eval()
    model_dir, onnx_dir = workdir / "tiny_model", workdir / "tiny_onnx"
    model.save_pretrained(model_dir)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(96, 64)).save_pretrained(model_dir)
    assert export_main(model_dir, "--output-dir", onnx_dir) == 0
    return model, model_dir, onnx_dir


# ------------------------------------------------------------------------------------------------ float32 parity


def test_export_writes_a_self_describing_folder(tiny, capsys):
    model, model_dir, onnx_dir = tiny
    assert sorted(path.name for path in onnx_dir.iterdir()) == ["config.json", ONNX_FILE_NAME, "preprocessor_config.json"]
    graph = onnx.load(onnx_dir / ONNX_FILE_NAME)
    onnx.checker.check_model(graph)
    (inputs,), (outputs,) = graph.graph.input, graph.graph.output
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert (inputs.name, dims(inputs)) == ("pixel_values", ["batch", 3, "height", "width"])
    assert (outputs.name, dims(outputs)) == ("logits", ["batch", model.config.num_labels, "height", "width"])
    assert inputs.type.tensor_type.elem_type == outputs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "BatchNormalization" not in {node.op_type for node in graph.graph.node}  # folded into the convs
    assert {p.key: p.value for p in graph.metadata_props}["fpn_seg.batch_norm_folded"] == "true"
    onnx_model = ORTModelForSemanticSegmentation.from_pretrained(onnx_dir)
    assert onnx_model.config.id2label == model.config.id2label
    saved = json.loads((onnx_dir / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 64, "longest_edge": 96}
    assert "auto_map" not in saved  # no torch code ships with an ONNX folder
    assert "auto_map" not in json.loads((onnx_dir / "config.json").read_text())


@pytest.mark.parametrize("shape", [(1, 64, 96), (2, 97, 130), (1, 33, 47), (3, 128, 64)])
def test_fp32_onnx_matches_the_torch_model(tiny, shape):
    model, _, onnx_dir = tiny
    batch, height, width = shape
    pixel_values = torch.randn(batch, 3, height, width)
    with torch.inference_mode():
        expected = model(pixel_values=pixel_values).logits
    logits = ORTModelForSemanticSegmentation.from_pretrained(onnx_dir)(pixel_values=pixel_values).logits
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    assert logits.shape == expected.shape == (batch, model.config.num_labels, height, width)
    assert (logits - expected).abs().max().item() <= PARITY_TOLERANCE


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_fp32_onnx_reproduces_the_mmseg_reference_logits(name, workdir):
    model, arrays = reference_model(name)
    report = export_onnx(model, workdir / f"{name}_onnx")
    onnx_model = ORTModelForSemanticSegmentation.from_pretrained(report.output_dir)
    logits = onnx_model(torch.from_numpy(arrays["pixel_values"])).logits  # 97x130 / 64x96: not multiples of 32
    difference = (logits - torch.from_numpy(arrays["logits"])).abs().max().item()
    print(f"{name}: ONNX fp32 vs mmseg 1.2.2, max abs logit difference {difference:.2e}")
    assert difference <= PARITY_TOLERANCE
    assert torch.equal(logits.argmax(1), torch.from_numpy(arrays["pred"]))
    other = torch.randn(1, 3, 75, 51)  # another size, against the torch model
    with torch.inference_mode():
        assert (onnx_model(other).logits - model(pixel_values=other).logits).abs().max().item() <= PARITY_TOLERANCE


# ------------------------------------------------------------------------------------------------ a trained model


@pytest.fixture(scope="module")
def trained(workdir) -> dict:
    """A narrow model fine-tuned with the Trainer on synthetic scenes, exported with int8 by the command line."""
    scenes = generate_street_scenes(workdir / "scenes", num_train=48, num_val=6, size=SCENE_SIZE, seed=0)
    model_dir, onnx_dir = workdir / "trained_model", workdir / "trained_onnx"
    height, width = SCENE_SIZE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights in every run (the thread count changes float sums)
    run_training([
        "--recipe", "demo", "--data_dir", str(scenes), "--output_dir", str(model_dir), "--max_steps", "200",
        "--crop_size", str(height), str(width), "--scale", str(width), str(height), "--eval_strategy", "no",
        "--backbone_overrides", '{"depth": 18, "stem_channels": 16, "base_channels": 16}',
        "--config_overrides", '{"neck_channels": 16, "head_channels": 16}', "--disable_tqdm", "true",
    ])  # fmt: skip
    torch.set_num_threads(threads)
    calibration = scenes / "leftImg8bit" / "train"
    assert export_main(model_dir, "-o", onnx_dir, "--int8", "--calibration-images", calibration) == 0
    model = SemanticFPNForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = SemanticFPNImageProcessor.from_pretrained(model_dir)
    validation = load_cityscapes(scenes, splits=("val",), progress=False)["validation"]
    return {
        "model": model,
        "processor": processor,
        "onnx_dir": onnx_dir,
        "images": [example["image"].convert("RGB") for example in validation],
        "labels": [processor.encode_labels(label_to_tensor(example["label"])) for example in validation],
        "scenes": scenes,
    }


def mean_iou_of(label_maps, labels, num_labels: int) -> float:
    metric = MeanIoU(num_labels, ignore_index=255)
    for prediction, label in zip(label_maps, labels):
        metric.update(prediction, label)
    return float(metric.compute()["mean_iou"])


@pytest.mark.parametrize("runtime", RUNTIMES, ids=RUNTIME_IDS)
def test_int8_agrees_with_float32_on_a_trained_model(trained, runtime):
    """int8 moves the labels of pixels where float32 hesitates between two classes, and no others. Agreement over all
    pixels depends on how many such pixels a model has (this short run's model, which itself changes with the CPU's
    rounding while it trains: 97-99.5% measured); agreement where float32's top two probabilities are 0.2 apart
    does not, and a broken quantisation fails it."""
    model, processor, images = trained["model"], trained["processor"], trained["images"]
    int8 = runtime.from_pretrained(trained["onnx_dir"], precision="int8")
    float32_maps, probabilities = segment(model, processor, images, return_probabilities=True)
    int8_maps = segment(int8, processor, images)
    agrees = [a == b for a, b in zip(int8_maps, float32_maps)]
    pixels = sum(m.numel() for m in float32_maps)
    agreement = sum(int(same.sum()) for same in agrees) / pixels
    decided = [(top2[0] - top2[1]) > 0.2 for top2 in (p.topk(2, dim=0).values for p in probabilities)]
    decided_pixels = sum(int(d.sum()) for d in decided)
    decided_agreement = sum(int((same & d).sum()) for same, d in zip(agrees, decided)) / decided_pixels
    num_labels = model.config.num_labels
    float32_miou = mean_iou_of(float32_maps, trained["labels"], num_labels)
    int8_miou = mean_iou_of(int8_maps, trained["labels"], num_labels)
    print(f"{runtime.runtime_name} int8 vs float32: agreement {100 * agreement:.2f}% ({100 * decided_agreement:.3f}% "
          f"where float32 is decided: {100 * decided_pixels / pixels:.1f}% of the pixels), mIoU {100 * int8_miou:.2f} "
          f"vs {100 * float32_miou:.2f}")
    assert float32_miou > 0.3  # the model learnt something, so that agreement means something
    assert decided_agreement >= 0.995
    assert agreement >= 0.95
    assert abs(int8_miou - float32_miou) <= 0.02
    graph = onnx.load(trained["onnx_dir"] / QUANTIZED_FILE_NAME)
    operators = [node.op_type for node in graph.graph.node]
    assert operators.count("QuantizeLinear") > 10 and operators[-1] == "Resize"  # logits leave in float32


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mode": "slide", "crop_size": (32, 48), "stride": (21, 32)},
        {"scales": MMSEG_MS_RATIOS[:3], "flip": True},
    ],
    ids=["whole", "slide", "ms+flip"],
)
@pytest.mark.parametrize("runtime", RUNTIMES, ids=RUNTIME_IDS)
def test_segment_runs_the_onnx_model_like_the_torch_model(trained, options, runtime):
    model, processor, images = trained["model"], trained["processor"], trained["images"][:3]
    onnx_model = runtime.from_pretrained(trained["onnx_dir"])
    labels, probabilities = segment(model, processor, images, return_probabilities=True, **options)
    onnx_labels, onnx_probabilities = segment(onnx_model, processor, images, return_probabilities=True, **options)
    for expected, got in zip(probabilities, onnx_probabilities):
        assert (expected - got).abs().max().item() <= PARITY_TOLERANCE
    agreement = np.mean([(a == b).float().mean().item() for a, b in zip(labels, onnx_labels)])
    assert agreement >= 0.999
    with pytest.raises(ValueError, match="bf16=True runs a torch model"):
        segment(onnx_model, processor, images, bf16=True)


@pytest.mark.parametrize(
    "flags, runtime, precision",
    [
        (["--onnx"], ORTModelForSemanticSegmentation, "fp32"),
        (["--onnx", "--int8"], ORTModelForSemanticSegmentation, "int8"),
        ([], ORTModelForSemanticSegmentation, "fp32"),  # an ONNX folder: ONNX Runtime by default
        (["--runtime", "openvino"], OVModelForSemanticSegmentation, "fp32"),
        (["--runtime", "openvino", "--precision", "int8"], OVModelForSemanticSegmentation, "int8"),
    ],
    ids=["onnx", "onnx-int8", "default", "openvino", "openvino-int8"],
)
def test_predict_command_runs_the_onnx_folder(trained, tmp_path, flags, runtime, precision):
    processor, onnx_dir, image = trained["processor"], trained["onnx_dir"], trained["images"][0]
    image_path = tmp_path / "scene.png"
    image.save(image_path)
    output_dir = tmp_path / "out"
    assert predict_main([str(onnx_dir), str(image_path), "-o", str(output_dir), *flags]) == 0
    saved = torch.from_numpy(np.asarray(Image.open(output_dir / "scene_label.png")).astype(np.int64))
    onnx_model = runtime.from_pretrained(onnx_dir, precision=precision)
    assert torch.equal(saved, segment(onnx_model, processor, image)[0]), flags
    assert (output_dir / "scene_overlay.png").is_file()


def test_auto_chooses_among_what_passed_on_this_machine(trained, tmp_path, monkeypatch, capsys):
    """auto on a trained model: every path that runs here is probed; the choice is the fastest that passed (or the
    fastest exact one, when no approximate path gains MIN_GAIN), and predict's labels are those of that runtime."""
    from fpn_seg.deployment.runtime_choice import MIN_GAIN

    monkeypatch.setenv("FPN_SEG_CACHE_DIR", str(tmp_path / "cache"))
    processor, onnx_dir, image = trained["processor"], trained["onnx_dir"], trained["images"][0]
    model, _, choice = load_runtime(onnx_dir, "auto")
    probes = {str(result.candidate): result for result in choice.probes}
    print(f"auto on this machine: {choice.summary()}")
    for name in ("ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO fp32", "OpenVINO int8"):
        assert probes[name].status == "ok", (name, probes[name].note)  # the trained model's int8 passes its check
    assert probes["OpenVINO int8"].agreement >= 0.95
    passed = sorted((r for r in choice.probes if r.status == "ok"), key=lambda r: r.seconds)
    fastest_exact = next(r for r in passed if r.precision == "fp32")
    expected = passed[0] if passed[0].seconds <= (1 - MIN_GAIN) * fastest_exact.seconds else fastest_exact
    assert (choice.runtime, choice.precision) == (expected.runtime, expected.precision)
    image_path = tmp_path / "scene.png"
    image.save(image_path)
    assert predict_main([str(onnx_dir), str(image_path), "-o", str(tmp_path / "out"), "--runtime", "auto"]) == 0
    assert f"fpn-seg predict: runtime auto chose {choice.summary()}" in capsys.readouterr().err  # cached: same line
    saved = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "scene_label.png")).astype(np.int64))
    assert torch.equal(saved, segment(model, processor, image)[0])


@pytest.mark.parametrize("runtime", RUNTIMES, ids=RUNTIME_IDS)
def test_pipeline_runs_the_onnx_model(trained, runtime):
    processor, image = trained["processor"], trained["images"][0]
    onnx_model = runtime.from_pretrained(trained["onnx_dir"], precision="int8")
    segmenter = pipeline("image-segmentation", model=onnx_model, image_processor=processor)
    label_map = torch.full((image.height, image.width), 255, dtype=torch.long)
    for found in segmenter(image):
        label_map[label_to_tensor(found["mask"]) > 0] = onnx_model.config.label2id[found["label"]]
    assert torch.equal(label_map, segment(onnx_model, processor, image)[0])


# ------------------------------------------------------------------------------------------------ bad input


def _export_error(capsys, *args) -> str:
    """The one-line error of an export refused with exit status 2 (after transformers' progress bars, if any)."""
    capsys.readouterr()
    status = export_main(*args)
    error = capsys.readouterr().err
    assert status == 2, error
    last_line = error.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last_line.startswith("fpn-seg export: error: ") and "Traceback" not in error, error
    return last_line


def test_a_folder_that_is_not_a_semantic_fpn_model_is_refused(tmp_path, capsys):
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
        patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=16, num_labels=3,
    )  # fmt: skip
    SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "segformer")
    error = _export_error(capsys, tmp_path / "segformer", "-o", tmp_path / "out")
    assert "holds a 'segformer' model (SegformerForSemanticSegmentation), not a Semantic FPN model" in error
    (tmp_path / "empty").mkdir()
    assert "has no config.json and no weights" in _export_error(capsys, tmp_path / "empty", "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_batch_norm_folded_copy_is_refused(tiny, tmp_path):
    model, _, _ = tiny
    with pytest.raises(ExportError, match="BatchNorm-folded inference copy .* pass the original model"):
        export_onnx(fold_batch_norm(model), tmp_path / "out")
    with pytest.raises(ExportError, match="a Linear is not a Semantic FPN model"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_calibration_images_that_cannot_be_used_are_named(tiny, tmp_path, capsys):
    _, model_dir, _ = tiny
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_an_image.png").write_text("hello")
    for calibration, message in [
        (str(tmp_path / "nothing" / "*.png"), "--calibration-images pattern '.*' matched no image files"),
        (str(tmp_path / "missing.png"), "--calibration-images '.*missing.png': no such file or folder"),
        (str(tmp_path / "empty"), "--calibration-images folder '.*' holds no image files"),
        (str(tmp_path / "not_an_image.png"), "--calibration-images: .*not_an_image.png: not an image file"),
    ]:
        error = _export_error(capsys, model_dir, "-o", out, "--int8", "--calibration-images", calibration)
        assert __import__("re").search(message, error), error
        assert not out.exists()  # nothing half-written
    assert "--int8 needs --calibration-images" in _export_error(capsys, model_dir, "-o", out, "--int8")
    error = _export_error(capsys, model_dir, "-o", out, "--calibration-images", str(tmp_path))
    assert "--calibration-images is used with --int8 only" in error


def test_an_output_folder_holding_a_model_is_not_overwritten(tiny, tmp_path, capsys):
    _, model_dir, onnx_dir = tiny
    before = {path.name: path.read_bytes() for path in model_dir.iterdir() if path.is_file()}
    error = _export_error(capsys, model_dir, "-o", model_dir)
    assert "the folder exists and is not empty; pass --overwrite" in error
    assert {path.name: path.read_bytes() for path in model_dir.iterdir() if path.is_file()} == before
    target = tmp_path / "onnx"
    target.mkdir()
    (target / ONNX_FILE_NAME).write_bytes(b"an earlier export")
    assert "--overwrite" in _export_error(capsys, model_dir, "-o", target)
    assert (target / ONNX_FILE_NAME).read_bytes() == b"an earlier export"
    assert export_main(model_dir, "-o", target, "--overwrite") == 0
    assert (target / ONNX_FILE_NAME).read_bytes() == (onnx_dir / ONNX_FILE_NAME).read_bytes()


def test_an_export_that_fails_its_check_writes_nothing(tiny, tmp_path, capsys, monkeypatch):
    _, model_dir, _ = tiny
    monkeypatch.setattr(export_module, "TOLERANCE", 0.0)  # float rounding alone now fails the check
    assert export_main(model_dir, "-o", tmp_path / "out") == 1
    assert "differs from the torch model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_onnx_folders_that_cannot_serve_the_request_are_named(tiny, tmp_path, capsys):
    _, model_dir, onnx_dir = tiny
    with pytest.raises(OnnxFolderError, match=f"has no {QUANTIZED_FILE_NAME} .* --int8 --calibration-images"):
        ORTModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="int8")
    with pytest.raises(OnnxFolderError, match="holds a torch model folder .*, not an ONNX export"):
        ORTModelForSemanticSegmentation.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="precision must be one of"):
        ORTModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="fp16")
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    assert predict_main([str(onnx_dir), str(image), "-o", str(tmp_path / "out"), "--onnx", "--int8"]) == 2
    error = capsys.readouterr().err
    assert f"has no {QUANTIZED_FILE_NAME}" in error and error.count("\n") == 1
    for flags, message in [(["--int8"], f"(--runtime onnxruntime, --precision int8): '{onnx_dir}' has no "),
                           (["--onnx", "--bf16"], "ONNX Runtime runs fp32 and int8, not bf16; bf16 runs on OpenVINO")]:
        assert predict_main([str(onnx_dir), str(image), "-o", str(tmp_path / "out"), *flags]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_pixel_values_of_the_wrong_shape_are_refused(tiny):
    onnx_model = ORTModelForSemanticSegmentation.from_pretrained(tiny[2])
    with pytest.raises(ValueError, match=r"pixel_values must be .*\(batch, 3, height, width\).* got shape \(3, 8, 8\)"):
        onnx_model(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(1, 4, 8, 8\)"):
        onnx_model(np.zeros((1, 4, 8, 8), dtype=np.float32))
    with pytest.raises(TypeError, match="got dtype torch.uint8"):
        onnx_model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="no loss"):
        onnx_model(torch.zeros(1, 3, 8, 8), labels=torch.zeros(1, 8, 8, dtype=torch.long))
    assert onnx_model(np.zeros((1, 3, 8, 8), dtype=np.float32)).logits.shape == (1, 4, 8, 8)


def test_the_core_works_without_the_onnx_extra(tiny, tmp_path):
    """With onnx / onnxruntime unimportable, `import fpn_seg` and the torch paths work; the ONNX paths name the extra."""
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    code = f"""
import sys
for name in ("onnx", "onnxruntime", "onnxscript"):
    sys.modules[name] = None  # as if not installed
import fpn_seg
from fpn_seg.deployment import ORTModelForSemanticSegmentation, export_onnx
assert not any(name.split(".")[0] in ("onnx", "onnxruntime") for name in sys.modules if sys.modules[name]), "imported"
from fpn_seg.predict import main
try:
    ORTModelForSemanticSegmentation.from_pretrained({str(tiny[2])!r})
except ImportError as error:
    assert "pip install 'fpn_seg[onnx]'" in str(error), error
    print("refused:", error)
assert main([{str(tiny[2])!r}, {str(image)!r}, "-o", {str(tmp_path / 'out')!r}, "--onnx"]) == 2
assert main([{str(tiny[1])!r}, {str(image)!r}, "-o", {str(tmp_path / 'torch')!r}]) == 0  # the torch path works
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "needs the onnxruntime package, which is not installed" in result.stdout
    assert "(--runtime onnxruntime): ONNX export and ONNX Runtime inference needs the onnxruntime" in result.stderr
    assert (tmp_path / "torch" / "image_label.png").is_file()
