"""Datasets and label maps a user may get wrong: refused with an error naming the split, file or likely cause.

Surfaces: the loaders (`load_cityscapes`, `load_ade20k`, `load_image_label_dataset`, `load_prepared`, `prepare_*`),
the transforms (`EvalTransform`, `TrainTransform`) and the label sanity check that the trainer runs on its first
batches (`check_label_values` after the processor's label policy, as `fpn_seg.train.check_first_batch_labels`).
"""

import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from datasets import Dataset, DatasetDict, Features, Image

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.data import (
    EvalTransform,
    TrainTransform,
    load_ade20k,
    load_cityscapes,
    load_image_label_dataset,
    load_prepared,
    prepare_ade20k,
)
from fpn_seg.image_reading import label_to_tensor
from fpn_seg.modeling_semantic_fpn import check_label_values


def png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)
    return str(path)


def image_label_dataset(tmp_path: Path, labels: list[np.ndarray], image_size=(8, 10), **columns) -> Dataset:
    """A `datasets.Dataset` of real PNG files: random images of `image_size` and the given label maps."""
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (*image_size, 3), np.uint8) for _ in labels]
    images = [png(tmp_path / f"image_{i}.png", image) for i, image in enumerate(pixels)]
    label_files = [png(tmp_path / f"label_{i}.png", label) for i, label in enumerate(labels)]
    names = {"image": columns.get("image", "image"), "label": columns.get("label", "label")}
    data = {names["image"]: images, names["label"]: label_files}
    return Dataset.from_dict(data, features=Features({names["image"]: Image(), names["label"]: Image()}))


def grid(values, size=(8, 10)) -> np.ndarray:
    """(H, W) uint8 label map cycling through `values`."""
    return np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size)


def first_example(dataset: Dataset, transform) -> dict:
    return dataset.with_transform(transform)[0]


PROCESSOR = SemanticFPNImageProcessor(scale=(20, 16))
TRAIN = TrainTransform(PROCESSOR, crop_size=(8, 8), seed=0)
EVAL = EvalTransform(PROCESSOR)


# ------------------------------------------------------------------------------------------------ datasets, transforms


def empty_split(tmp_path):
    data = DatasetDict(train=image_label_dataset(tmp_path, [grid([0, 1])]))
    data["validation"] = data["train"].select([])
    return lambda: load_image_label_dataset(data)


def other_column_names(tmp_path):
    dataset = image_label_dataset(tmp_path, [grid([0, 1])], image="img", label="mask")
    return lambda: first_example(dataset, EVAL)


def label_smaller_than_image_eval(tmp_path):
    dataset = image_label_dataset(tmp_path, [grid([0, 1], size=(8, 9))])
    return lambda: first_example(dataset, EVAL)


def label_smaller_than_image_train(tmp_path):
    dataset = image_label_dataset(tmp_path, [grid([0, 1], size=(4, 5))])
    return lambda: first_example(dataset, TRAIN)


def colour_coded_labels(tmp_path):
    colours = np.zeros((8, 10, 3), np.uint8)
    colours[:, 5:] = (128, 64, 128)  # Cityscapes' "road" colour
    dataset = image_label_dataset(tmp_path, [colours])
    return lambda: first_example(dataset, EVAL)


def write_ade20k(root: Path, annotation: np.ndarray | None = None, jpeg_annotation: bool = False) -> Path:
    rng = np.random.default_rng(1)
    images = root / "ADEChallengeData2016/images/training"
    annotations = root / "ADEChallengeData2016/annotations/training"
    images.mkdir(parents=True)
    PIL.Image.fromarray(rng.integers(0, 256, (8, 10, 3), np.uint8)).save(images / "ADE_train_00000001.jpg", quality=90)
    label = grid(range(0, 151, 7)) if annotation is None else annotation
    annotations.mkdir(parents=True)
    file_format = "JPEG" if jpeg_annotation else "PNG"
    PIL.Image.fromarray(label).save(annotations / "ADE_train_00000001.png", format=file_format)
    return root


def ade20k_jpeg_annotation(tmp_path):
    root = write_ade20k(tmp_path / "ade", jpeg_annotation=True)
    return lambda: load_ade20k(root, splits=["train"], progress=False)


def ade20k_rgb_annotation_prepared(tmp_path):
    root = write_ade20k(tmp_path / "ade", annotation=np.zeros((8, 10, 3), np.uint8))
    return lambda: prepare_ade20k(root, tmp_path / "out", splits=["train"], progress=False)


def cityscapes_rgb_label_ids(tmp_path):
    stem = tmp_path / "cs/{}/train/aachen/aachen_000000_000019_{}.png"
    png(Path(str(stem).format("leftImg8bit", "leftImg8bit")), np.zeros((8, 10, 3), np.uint8))
    png(Path(str(stem).format("gtFine", "gtFine_labelIds")), np.zeros((8, 10, 3), np.uint8))
    return lambda: load_cityscapes(tmp_path / "cs", splits=["train"], progress=False)


def prepared_output_exists(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    prepare_ade20k(root, tmp_path / "out", splits=["train"], progress=False)
    return lambda: prepare_ade20k(root, tmp_path / "out", splits=["train"], progress=False)


def nothing_prepared(tmp_path):
    (tmp_path / "out").mkdir()
    return lambda: load_prepared(tmp_path / "out")


# (build the data and return the failing call, error class, message fragment: a regex)
BAD_DATA = {
    "empty-split": (
        empty_split, ValueError, r"load_image_label_dataset: split 'validation' is empty \(0 examples, columns "
        r"\['image', 'label'\]\)",
    ),
    "columns-with-other-names": (
        other_column_names, KeyError,
        r"EvalTransform: the batch has no column\(s\) \['image', 'label'\]; columns: \['img', 'mask'\]\. Name yours "
        r"with image_column=\.\.\. and label_column=\.\.\.",
    ),
    "label-map-of-another-size-eval": (
        label_smaller_than_image_eval, ValueError,
        r"EvalTransform: image size \(8, 10\) and label size \(8, 9\) differ",
    ),
    "label-map-of-another-size-train": (
        label_smaller_than_image_train, ValueError,
        r"TrainTransform: image size \(8, 10\) and label size \(4, 5\) differ",
    ),
    "rgb-label-map": (
        colour_coded_labels, ValueError, r"mode 'RGB' is a colour-coded mask, expected class indices",
    ),
    "jpeg-annotation": (
        ade20k_jpeg_annotation, ValueError, r"ADE_train_00000001\.png is a JPEG file; label maps must be PNG",
    ),
    "rgb-annotation-prepared": (
        ade20k_rgb_annotation_prepared, ValueError,
        r"ADE_train_00000001\.png has mode RGB; expected a single-channel 8-bit map",
    ),
    "rgb-cityscapes-label-ids": (
        cityscapes_rgb_label_ids, ValueError, r"aachen_000000_000019_gtFine_labelIds\.png has mode RGB",
    ),
    "prepare-output-exists": (prepared_output_exists, FileExistsError, r"out/data exists; pass overwrite=True"),
    "load-prepared-from-nothing": (
        nothing_prepared, FileNotFoundError, r"no Parquet files under .*out/data \(run `prepare` first\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_datasets_are_refused_naming_the_problem(case, tmp_path):
    build, error, message = BAD_DATA[case]
    call = build(tmp_path)
    with pytest.raises(error, match=re.compile(message, re.S)):
        call()


def test_a_refused_prepare_keeps_the_previous_output(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    prepare_ade20k(root, tmp_path / "out", splits=["train"], progress=False)
    before = {path.name: path.read_bytes() for path in (tmp_path / "out" / "data").iterdir()}
    with pytest.raises(FileExistsError):
        prepare_ade20k(root, tmp_path / "out", splits=["train"], progress=False)
    assert {path.name: path.read_bytes() for path in (tmp_path / "out" / "data").iterdir()} == before
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["data", "summary.json"]


# ------------------------------------------------------------------------------------------------ label values


CITYSCAPES_19 = tiny_config(num_labels=19)
ADE20K_150 = tiny_config(num_labels=150)  # reduce_labels forgotten: the ADE20K presets set it
ADE20K_150_REDUCED = tiny_config(num_labels=150, reduce_labels=True)

# (config, raw label values in the file, error message fragment or None when the labels are valid)
LABEL_VALUES = {
    "cityscapes-label-ids-for-train-ids": (
        CITYSCAPES_19, [0, 7, 8, 26, 33], r"values 26, 33 outside the 19 class ids.*label ids given where train ids",
    ),
    "cityscapes-train-ids": (CITYSCAPES_19, [0, 7, 18, 255], None),
    "ade20k-raw-without-reduce_labels": (
        ADE20K_150, [0, 1, 149, 150], r"values 150 outside the 150 class ids \(0\.\.149\).*reduce_labels=False: "
        r"ADE20K-style annotations need reduce_labels=True",
    ),
    "ade20k-raw-with-reduce_labels": (ADE20K_150_REDUCED, [0, 1, 149, 150], None),
    "values-above-num_labels": (
        tiny_config(num_labels=4), [0, 3, 4, 200], r"values 4, 200 outside the 4 class ids \(0\.\.3\) and "
        r"ignore_index=255",
    ),
    "rgb-colours-read-as-grey": (  # a colour mask converted to grey ("L") by an image editor
        CITYSCAPES_19, [0, 90, 128], r"values 90, 128 outside.*colour-coded masks instead of class-index maps",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(LABEL_VALUES))
def test_label_sanity_check_names_the_likely_cause(case, tmp_path):
    """The trainer's check (`check_first_batch_labels`): encode with the config's policy, then `check_label_values`;
    the model's loss runs the same check when its cross-entropy fails, so a Trainer cannot silently train on such
    labels either (without a device sync on every step)."""
    config, values, message = LABEL_VALUES[case]
    path = png(tmp_path / "label.png", grid(values))
    processor = SemanticFPNImageProcessor.from_model_config(config)
    labels = processor.encode_labels(label_to_tensor(path))
    if message is None:
        check_label_values(labels, config)
        return
    with pytest.raises(ValueError, match=re.compile(message, re.S)):
        check_label_values(labels, config)
    model = SemanticFPNForSemanticSegmentation(config)
    with pytest.raises(ValueError, match=re.compile(message, re.S)):
        model(torch.zeros(1, 3, 64, 80), labels=labels[None])  # large enough for BatchNorm in training mode

