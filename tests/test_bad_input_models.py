"""Model folders and model inputs a user may get wrong: each is refused with an error that names the cause.

Surfaces: `AutoModelForSemanticSegmentation.from_pretrained` (with `fpn_seg` imported) on broken or mismatched folders,
the model's forward (`pixel_values`, `labels`), and code shipped with a folder (never executed unless asked for).
"""

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor

MARKER_NAME = "code_was_executed"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny 4-class model with its processor, saved as users save them."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4))
    model.save_pretrained(folder)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(64, 32)).save_pretrained(folder)
    return folder


def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def edit_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


class WritesAMarker:
    """A pickled object whose unpickling would run `open(marker, "w")`: what a malicious .bin could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_weights(folder: Path) -> None:
    """Replace model.safetensors by a pytorch_model.bin that needs `weights_only=False` (and would run code)."""
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "payload": WritesAMarker(folder.parent / MARKER_NAME)}, folder / "pytorch_model.bin")


def truncate(name: str, keep: float):
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return edit


def depth(value: int):
    return lambda folder: edit_config(folder, lambda config: config["backbone_config"].update(depth=value))


SEVEN_LABELS = {"id2label": {i: f"class_{i}" for i in range(7)}}
ONES = torch.ones(2)

# (change the saved folder, from_pretrained kwargs, error class, message fragment: a regex)
BAD_MODEL_FOLDERS = {
    "no-weights-file": (
        lambda folder: (folder / "model.safetensors").unlink(), {}, OSError, r"no file named model\.safetensors"
    ),
    "half-written-weights": (
        truncate("model.safetensors", 0.5), {}, OSError,
        r"the weights file \(model\.safetensors\) is truncated or corrupt .*was the save interrupted",
    ),
    "zero-byte-weights": (truncate("model.safetensors", 0.0), {}, OSError, r"model\.safetensors\) is truncated"),
    "half-written-config": (truncate("config.json", 0.5), {}, OSError, r"config\.json' is not a valid JSON file"),
    "no-config": (  # transformers' own words (AutoConfig falls back to preprocessor_config.json, which has no type)
        lambda folder: (folder / "config.json").unlink(), {}, ValueError,
        r"Unrecognized model in .*model\. Should have a `model_type` key in its config\.json",
    ),
    "unknown-backbone-depth": (  # transformers' validation error of a @strict config
        depth(42), {}, StrictDataclassError, r"depth=42 is not supported; expected one of \[18, 34, 50"
    ),
    "other-backbone-depth": (
        depth(34), {}, ValueError,
        r"the checkpoint lacks 96 weights of the model \(backbone\.layer1\.2\..*do not describe the same network.*"
        r"strict=False",
    ),
    "num_labels-differs": (
        None, {"num_labels": 7}, ValueError,
        r"the checkpoint's classifier has 4 classes but the config asks for 7 .*ignore_mismatched_sizes=True",
    ),
    "id2label-differs": (None, SEVEN_LABELS, ValueError, r"classifier has 4 classes but the config asks for 7"),
    "other-widths": (
        None, {"neck_channels": 32}, ValueError,
        r"weights have another shape \(size mismatch\).*\(8, 16, 3, 3\) in the checkpoint, \(8, 32, 3, 3\) in the "
        r"model",
    ),
    "missing-keys": (
        lambda folder: edit_weights(folder, lambda weights: weights.pop("decode_head.classifier.bias")), {},
        ValueError, r"lacks 1 weights of the model \(decode_head\.classifier\.bias\)",
    ),
    "extra-keys": (
        lambda folder: edit_weights(folder, lambda weights: weights.update({"decode_head.extra.weight": ONES})),
        {}, ValueError, r"holds 1 weights the model does not have \(decode_head\.extra\.weight\)",
    ),
    "weights-need-weights_only=False": (
        pickled_weights, {}, pickle.UnpicklingError,
        r"refused\. The pickled weights file \(pytorch_model\.bin\) cannot be read with "
        r"torch\.load\(weights_only=True\): WeightsUnpickler error: Unsupported global: GLOBAL io\.open was not an "
        r"allowed global by default\. Loading it with weights_only=False could run code from the file",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_MODEL_FOLDERS))
def test_bad_model_folders_are_refused_with_the_cause(case, saved_model, tmp_path):
    change, kwargs, error, message = BAD_MODEL_FOLDERS[case]
    folder = copy_of(saved_model, tmp_path / "model")
    if change is not None:
        change(folder)
    with pytest.raises(error, match=re.compile(message, re.S)):
        AutoModelForSemanticSegmentation.from_pretrained(folder, **kwargs)
    assert not (tmp_path / MARKER_NAME).exists()  # nothing from the folder was executed


def test_escape_hatches_load_what_the_errors_refuse(saved_model, tmp_path):
    """`ignore_mismatched_sizes=True` starts a new classifier; `strict=False` loads with transformers' report."""
    model = AutoModelForSemanticSegmentation.from_pretrained(saved_model, ignore_mismatched_sizes=True, **SEVEN_LABELS)
    assert model.decode_head.classifier.out_channels == 7
    folder = copy_of(saved_model, tmp_path / "model")
    edit_weights(folder, lambda weights: weights.pop("decode_head.classifier.bias"))
    model, info = AutoModelForSemanticSegmentation.from_pretrained(folder, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {"decode_head.classifier.bias"}


# ------------------------------------------------------------------------------------------------ forward


def labels_of(*values: int) -> torch.Tensor:
    """(1, 8, 8) labels holding `values` (and class 0 elsewhere)."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels.view(-1)[: len(values)] = torch.tensor(values)
    return labels


# (number of classes, forward inputs, error class, message fragment: a regex)
BAD_FORWARD_INPUTS = {
    "one-image-without-batch-dimension": (
        4, {"pixel_values": torch.zeros(3, 8, 8)}, ValueError,
        r"pixel_values must be a float tensor of shape \(batch, 3, height, width\).*got shape \(3, 8, 8\).*batch "
        r"dimension",
    ),
    "channels-last-images": (4, {"pixel_values": torch.zeros(1, 8, 8, 3)}, ValueError, r"\.permute\(0, 3, 1, 2\)"),
    "grey-single-channel": (4, {"pixel_values": torch.zeros(1, 1, 8, 8)}, ValueError, r"got shape \(1, 1, 8, 8\)"),
    "uint8-images": (
        4, {"pixel_values": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, TypeError,
        r"got dtype torch\.uint8: pass raw images through the processor",
    ),
    "numpy-images": (4, {"pixel_values": np.zeros((1, 3, 8, 8), np.float32)}, TypeError, r"got a ndarray"),
    "labels-above-num_labels": (
        4, {"labels": labels_of(3, 4, 7, 255)}, ValueError,
        r"labels hold values 4, 7 outside the 4 class ids \(0\.\.3\) and ignore_index=255.*reduce_labels=False",
    ),
    "ade20k-annotations-without-reduce_labels": (
        150, {"labels": labels_of(0, 150)}, ValueError,
        r"values 150 outside the 150 class ids.*reduce_labels=False: ADE20K-style annotations need reduce_labels=True",
    ),
    "cityscapes-label-ids-for-train-ids": (
        19, {"labels": labels_of(7, 26, 33)}, ValueError,
        r"values 26, 33 outside the 19 class ids.*label ids given where train ids are expected",
    ),
    "minus-one-as-ignore": (
        4, {"labels": labels_of(-1, 2)}, ValueError,
        r"values -1 outside .*negative values marking ignored pixels \(set the config's ignore_index=-1, or map them "
        r"to 255\)",
    ),
    "bilinear-resized-labels": (
        4, {"labels": labels_of(1, 2).float() * 0.75}, ValueError,
        r"fractional values.*nearest-neighbour interpolation",
    ),
    "colour-coded-labels": (
        4, {"labels": torch.zeros(1, 8, 8, 3, dtype=torch.long)}, ValueError, r"got \(1, 8, 8, 3\)"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FORWARD_INPUTS))
def test_bad_forward_inputs_are_named(case):
    num_labels, inputs, error, message = BAD_FORWARD_INPUTS[case]
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=num_labels)).eval()
    inputs = {"pixel_values": torch.zeros(1, 3, 8, 8), **inputs}
    with pytest.raises(error, match=re.compile(message, re.S)):
        model(**inputs)


# ------------------------------------------------------------------------------------------------ remote code


def tamper(folder: Path, code_file: str) -> Path:
    """Prepend a line to `code_file` that writes a marker file when the code is executed; returns the marker."""
    marker = folder.parent / f"{code_file}.{MARKER_NAME}"
    path = folder / code_file
    path.write_text(f"open({str(marker)!r}, 'w').close()\n" + path.read_text())
    return marker


def test_shipped_code_is_not_executed_without_trust_remote_code(saved_model, tmp_path, monkeypatch):
    """With `fpn_seg` imported, a saved folder loads with the registered local classes: the (tampered) code files it
    ships are not run by AutoModel, AutoImageProcessor or the pipeline, with `trust_remote_code` unset or False."""
    import transformers.dynamic_module_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # if it ran: not ~/.cache
    folder = copy_of(saved_model, tmp_path / "model")
    markers = [tamper(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".py")]
    assert len(markers) == 9  # modeling, configuration (x2 each), image processing, OpenCV kernels, atomic, policy,
    # model loading
    for trust in (None, False):
        model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=trust)
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust)
        assert type(model) is SemanticFPNForSemanticSegmentation and type(processor) is SemanticFPNImageProcessor
    segmenter = pipeline("image-segmentation", model=str(folder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    assert segmenter(image)
    assert not [marker.name for marker in markers if marker.exists()]
    assert not (tmp_path / "modules").exists()
