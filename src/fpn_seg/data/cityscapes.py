"""Cityscapes from its official folder layout (or zips), and the Cityscapes label table.

Layout (as extracted from `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (made by cityscapesscripts)
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (in the official zip)

**Label policy: the `label` column always holds train ids** (0..18 = `CITYSCAPES_CLASSES`, 255 = ignore), whichever
files it was read from. `*_labelTrainIds.png` files are stored as they are; `*_labelIds.png` files are decoded,
mapped with the `cityscapesscripts` table below (label ids without a train id -> 255) and re-encoded when loading.
Converting once, at load time, is the safer choice: the stored labels then mean the same thing as mmseg's inputs and
as the Cityscapes presets expect (`label_map=None`, `reduce_labels=False`), and no later step can forget the mapping.
Each stored label carries the mark "Cityscapes train ids" (a `fpn_seg.LabelPolicy`, see `fpn_seg.data.label_marks`),
so a processor with a `label_map` or `reduce_labels` (which would map train ids a second time) is refused by the
transforms.
(Models that read raw label ids instead can use `config.label_map = cityscapes_label_map()`.)

DatasetDict keys follow the Hub's split names: `train`, `validation`, `test` (`splits` accepts `val` or
`validation`).
"""

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from datasets import DatasetDict

from ..label_policy import LabelPolicy
from ..label_sets import CITYSCAPES_CLASSES
from .folders import DataSource, ImageLabelPair, LabelConversion, build_split, index_files, pair_files


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the `cityscapesscripts` label table (`cityscapesscripts/helpers/labels.py`)."""

    name: str
    id: int
    train_id: int
    category: str
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled",             0, 255, "void",         (0, 0, 0)),
    CityscapesLabel("ego vehicle",           1, 255, "void",         (0, 0, 0)),
    CityscapesLabel("rectification border",  2, 255, "void",         (0, 0, 0)),
    CityscapesLabel("out of roi",            3, 255, "void",         (0, 0, 0)),
    CityscapesLabel("static",                4, 255, "void",         (0, 0, 0)),
    CityscapesLabel("dynamic",               5, 255, "void",         (111, 74, 0)),
    CityscapesLabel("ground",                6, 255, "void",         (81, 0, 81)),
    CityscapesLabel("road",                  7,   0, "flat",         (128, 64, 128)),
    CityscapesLabel("sidewalk",              8,   1, "flat",         (244, 35, 232)),
    CityscapesLabel("parking",               9, 255, "flat",         (250, 170, 160)),
    CityscapesLabel("rail track",           10, 255, "flat",         (230, 150, 140)),
    CityscapesLabel("building",             11,   2, "construction", (70, 70, 70)),
    CityscapesLabel("wall",                 12,   3, "construction", (102, 102, 156)),
    CityscapesLabel("fence",                13,   4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail",           14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge",               15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel",               16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole",                 17,   5, "object",       (153, 153, 153)),
    CityscapesLabel("polegroup",            18, 255, "object",       (153, 153, 153)),
    CityscapesLabel("traffic light",        19,   6, "object",       (250, 170, 30)),
    CityscapesLabel("traffic sign",         20,   7, "object",       (220, 220, 0)),
    CityscapesLabel("vegetation",           21,   8, "nature",       (107, 142, 35)),
    CityscapesLabel("terrain",              22,   9, "nature",       (152, 251, 152)),
    CityscapesLabel("sky",                  23,  10, "sky",          (70, 130, 180)),
    CityscapesLabel("person",               24,  11, "human",        (220, 20, 60)),
    CityscapesLabel("rider",                25,  12, "human",        (255, 0, 0)),
    CityscapesLabel("car",                  26,  13, "vehicle",      (0, 0, 142)),
    CityscapesLabel("truck",                27,  14, "vehicle",      (0, 0, 70)),
    CityscapesLabel("bus",                  28,  15, "vehicle",      (0, 60, 100)),
    CityscapesLabel("caravan",              29, 255, "vehicle",      (0, 0, 90)),
    CityscapesLabel("trailer",              30, 255, "vehicle",      (0, 0, 110)),
    CityscapesLabel("train",                31,  16, "vehicle",      (0, 80, 100)),
    CityscapesLabel("motorcycle",           32,  17, "vehicle",      (0, 0, 230)),
    CityscapesLabel("bicycle",              33,  18, "vehicle",      (119, 11, 32)),
    CityscapesLabel("license plate",        -1,  -1, "vehicle",      (0, 0, 142)),
)
# fmt: on

CITYSCAPES_NAME_TO_LABEL: dict[str, CityscapesLabel] = {label.name: label for label in CITYSCAPES_LABELS}
CITYSCAPES_ID_TO_LABEL: dict[int, CityscapesLabel] = {label.id: label for label in CITYSCAPES_LABELS}
CITYSCAPES_IGNORE_INDEX = 255

CITYSCAPES_TRAIN_ID_POLICY = LabelPolicy(
    description="Cityscapes train ids (0..18, 255 = ignore)", reduce_labels=False, label_map=None, ignore_index=255
)

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLIT_KEYS = {"train": "train", "val": "validation", "test": "test"}
LabelType = Literal["trainIds", "labelIds", "auto"]

_IMAGE_PATTERN = re.compile(r"^(?:.*/)?leftImg8bit/(?P<split>[^/]+)/(?P<city>[^/]+)/(?P<stem>[^/]+)_leftImg8bit\.png$")
_LABEL_PATTERN = re.compile(
    r"^(?:.*/)?gtFine/(?P<split>[^/]+)/(?P<city>[^/]+)/(?P<stem>[^/]+)_gtFine_(?P<kind>labelTrainIds|labelIds)\.png$"
)


def cityscapes_label_map() -> dict[int, int]:
    """Label id -> train id for the 19 evaluated classes (a `SemanticFPNConfig.label_map` for raw label-id maps)."""
    return {label.id: label.train_id for label in CITYSCAPES_LABELS if 0 <= label.train_id < 255}


def _label_id_lookup() -> np.ndarray:
    lookup = np.full(256, CITYSCAPES_IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in cityscapes_label_map().items():
        lookup[label_id] = train_id
    return lookup


def _mask(values: Sequence[int]) -> np.ndarray:
    mask = np.zeros(256, dtype=bool)
    mask[list(values)] = True
    return mask


TRAIN_ID_CONVERSION = LabelConversion(
    policy=CITYSCAPES_TRAIN_ID_POLICY,
    valid_values=_mask([*range(len(CITYSCAPES_CLASSES)), CITYSCAPES_IGNORE_INDEX]),
    value_names={**dict(enumerate(CITYSCAPES_CLASSES)), CITYSCAPES_IGNORE_INDEX: "ignore"},
)
LABEL_ID_CONVERSION = LabelConversion(
    policy=CITYSCAPES_TRAIN_ID_POLICY,
    valid_values=_mask([label.id for label in CITYSCAPES_LABELS if label.id >= 0]),
    lookup=_label_id_lookup(),
    value_names={label.id: label.name for label in CITYSCAPES_LABELS if label.id >= 0},
)


def _split_folder(split: str) -> str:
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"Cityscapes: unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}.")
    return SPLIT_FOLDERS[split]


def cityscapes_pairs(
    source: DataSource, split: str, label_type: LabelType = "auto"
) -> tuple[list[ImageLabelPair], LabelConversion]:
    """The (image, label) pairs of one split and how its labels become train ids.

    `label_type="auto"` uses `*_gtFine_labelTrainIds.png` when the split has any, else `*_gtFine_labelIds.png`.
    """
    if label_type not in ("trainIds", "labelIds", "auto"):
        raise ValueError(f"Cityscapes: label_type={label_type!r}; expected 'trainIds', 'labelIds' or 'auto'.")
    folder = _split_folder(split)
    what = f"Cityscapes split {split!r} ({', '.join(str(p) for p in source.locations)})"
    images = index_files(
        source, _IMAGE_PATTERN, lambda m: (m["city"], m["stem"]) if m["split"] == folder else None, what
    )
    if not images:
        raise ValueError(f"{what}: no images found under leftImg8bit/{folder}/<city>/*_leftImg8bit.png.")
    labels_by_kind: dict[str, dict] = {"labelTrainIds": {}, "labelIds": {}}
    for kind, labels in labels_by_kind.items():
        labels.update(
            index_files(
                source,
                _LABEL_PATTERN,
                lambda m, kind=kind: (m["city"], m["stem"]) if m["split"] == folder and m["kind"] == kind else None,
                what,
            )
        )
    if label_type == "auto":
        label_type = "trainIds" if labels_by_kind["labelTrainIds"] else "labelIds"
    kind = "labelTrainIds" if label_type == "trainIds" else "labelIds"
    conversion = TRAIN_ID_CONVERSION if label_type == "trainIds" else LABEL_ID_CONVERSION
    pairs = pair_files(
        source,
        images,
        labels_by_kind[kind],
        what=what,
        expected_label=lambda image: _label_name_for(image, folder, kind),
        rename_label=lambda label: label.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"),
    )
    return pairs, conversion


def _label_name_for(image: str, folder: str, kind: str) -> str:
    city, name = image.split("/")[-2:]
    return f"gtFine/{folder}/{city}/{name.replace('_leftImg8bit.png', f'_gtFine_{kind}.png')}"


def load_cityscapes(
    root: str | os.PathLike | Sequence[str | os.PathLike],
    splits: Sequence[str] = ("train", "val"),
    label_type: LabelType = "auto",
    *,
    num_proc: int = 1,
    progress: bool = True,
) -> DatasetDict:
    """Cityscapes as a `DatasetDict` (`train` / `validation` / `test`) with `image` and `label` (train ids) columns.

    Args:
        root: the folder holding `leftImg8bit/` and `gtFine/`, or the official zips (archive members are embedded in
            memory: for the full dataset run `python -m fpn_seg.data.prepare cityscapes` once and load its Parquet).
        splits: official split names (`train`, `val` or `validation`, `test`).
        label_type: `"trainIds"`, `"labelIds"` (mapped to train ids here) or `"auto"`.
        num_proc: processes for reading (label-id maps are decoded and re-encoded).
        progress: show a progress bar.

    Every image needs its label and both must have the same size (read from the file headers); otherwise a
    `ValueError` names the file(s). Images are stored by path (decoded lazily by `datasets`).
    """
    source = DataSource(root)
    splits_out = {}
    for split in splits:
        pairs, conversion = cityscapes_pairs(source, split, label_type)
        key = SPLIT_KEYS[_split_folder(split)]
        splits_out[key] = build_split(
            source, pairs, conversion, num_proc=num_proc, desc=f"Cityscapes {key}", progress=progress
        )
    return DatasetDict(splits_out)


__all__ = [
    "CITYSCAPES_ID_TO_LABEL",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_NAME_TO_LABEL",
    "CITYSCAPES_TRAIN_ID_POLICY",
    "CityscapesLabel",
    "LABEL_ID_CONVERSION",
    "TRAIN_ID_CONVERSION",
    "cityscapes_label_map",
    "cityscapes_pairs",
    "load_cityscapes",
]
