"""ADE20K (the SceneParsing `ADEChallengeData2016` release) from its official folder layout or zip.

Layout::

    root/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png

(`root` may also be the `ADEChallengeData2016` folder itself, or `ADEChallengeData2016.zip`.)

**Label policy: the `label` column holds the raw annotations** (0 = "other", `v` = class `v - 1` of
`ADE20K_CLASSES`, 1..150), exactly the files' bytes. mmseg's `reduce_zero_label` (0 -> 255, `v` -> `v - 1`) is
applied once, by the processor, because the ADE20K presets set `reduce_labels=True` (as transformers' ADE20K models
and evaluate's `mean_iou(reduce_labels=True)` expect raw annotations too). To make "applied twice" and "never
applied" impossible to miss, each stored label carries the mark "raw ADE20K annotations, needs reduce_labels=True"
(a `fpn_seg.LabelPolicy`, see `fpn_seg.data.label_marks`); the training and evaluation transforms refuse a
processor whose `do_reduce_labels` is off (or that has a `label_map`). Labels reduced by hand and re-saved lose the mark.

DatasetDict keys follow the Hub's split names: `train` (folder `training`) and `validation`.
"""

import os
import re
from collections.abc import Sequence

import numpy as np
from datasets import DatasetDict

from ..label_policy import LabelPolicy
from ..label_sets import ADE20K_CLASSES
from .folders import DataSource, ImageLabelPair, LabelConversion, build_split, index_files, pair_files

ADE20K_RAW_POLICY = LabelPolicy(
    description="raw ADE20K annotations (0 = other, v = class v - 1; they need reduce_labels=True)",
    reduce_labels=True,
    label_map=None,
    ignore_index=255,
)

_valid_values = np.zeros(256, dtype=bool)
_valid_values[: len(ADE20K_CLASSES) + 1] = True
RAW_ANNOTATION_CONVERSION = LabelConversion(
    policy=ADE20K_RAW_POLICY,
    valid_values=_valid_values,
    value_names={0: "other", **{index + 1: name for index, name in enumerate(ADE20K_CLASSES)}},
)

SPLIT_FOLDERS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
SPLIT_KEYS = {"training": "train", "validation": "validation"}

_IMAGE_PATTERN = re.compile(r"^(?:.*/)?images/(?P<split>training|validation)/(?P<stem>[^/]+)\.jpg$")
_LABEL_PATTERN = re.compile(r"^(?:.*/)?annotations/(?P<split>training|validation)/(?P<stem>[^/]+)\.png$")


def _split_folder(split: str) -> str:
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"ADE20K: unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}.")
    return SPLIT_FOLDERS[split]


def ade20k_pairs(source: DataSource, split: str) -> tuple[list[ImageLabelPair], LabelConversion]:
    """The (image, annotation) pairs of one split and how the annotations are stored (raw, marked)."""
    folder = _split_folder(split)
    what = f"ADE20K split {split!r} ({', '.join(str(p) for p in source.locations)})"
    images = index_files(source, _IMAGE_PATTERN, lambda m: m["stem"] if m["split"] == folder else None, what)
    if not images:
        raise ValueError(f"{what}: no images found under [ADEChallengeData2016/]images/{folder}/*.jpg.")
    labels = index_files(source, _LABEL_PATTERN, lambda m: m["stem"] if m["split"] == folder else None, what)
    pairs = pair_files(
        source,
        images,
        labels,
        what=what,
        expected_label=lambda image: (
            image.replace(f"images/{folder}/", f"annotations/{folder}/")[: -len(".jpg")] + ".png"
        ),
    )
    return pairs, RAW_ANNOTATION_CONVERSION


def load_ade20k(
    root: str | os.PathLike | Sequence[str | os.PathLike],
    splits: Sequence[str] = ("train", "validation"),
    *,
    num_proc: int = 1,
    progress: bool = True,
) -> DatasetDict:
    """ADE20K as a `DatasetDict` (`train` / `validation`) with `image` and `label` (raw annotations) columns.

    Args:
        root: the folder holding `ADEChallengeData2016/` (or that folder, or the zip: archive members are embedded in
            memory; for the full dataset run `python -m fpn_seg.data.prepare ade20k` once and load its Parquet).
        splits: `train` / `training`, `validation` / `val`.
        num_proc: processes for reading.
        progress: show a progress bar.

    Every image needs its annotation and both must have the same size (read from the file headers); otherwise a
    `ValueError` names the file(s). Use a processor with `do_reduce_labels=True` (the ADE20K presets' policy).
    """
    source = DataSource(root)
    splits_out = {}
    for split in splits:
        pairs, conversion = ade20k_pairs(source, split)
        key = SPLIT_KEYS[_split_folder(split)]
        splits_out[key] = build_split(
            source, pairs, conversion, num_proc=num_proc, desc=f"ADE20K {key}", progress=progress
        )
    return DatasetDict(splits_out)


__all__ = ["ADE20K_RAW_POLICY", "RAW_ANNOTATION_CONVERSION", "ade20k_pairs", "load_ade20k"]
