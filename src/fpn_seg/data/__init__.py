"""Datasets for Semantic FPN as `datasets.DatasetDict`s with `image` and `label` (`datasets.Image()`) columns.

- [`load_cityscapes`]: official Cityscapes folders or zips; the `label` column always holds train ids.
- [`load_ade20k`]: `ADEChallengeData2016`; the `label` column holds the raw annotations (reduced once, by a
  processor with `do_reduce_labels=True`).
- [`load_image_label_dataset`]: any `datasets` dataset or local dataset folder, with configurable column names.
- [`prepare_cityscapes`] / [`prepare_ade20k`] (`python -m fpn_seg.data.prepare`): checked Parquet copies, loaded
  with [`load_prepared`].
- [`TrainTransform`] / [`EvalTransform`]: mmseg's training recipe and the test-time path, for `with_transform`.
- [`generate_street_scenes`] (`python -m fpn_seg.data.synthetic`): a small synthetic Cityscapes-layout dataset.

Labels written by these loaders carry their label policy (a `fpn_seg.LabelPolicy`, see `label_marks`); the
transforms refuse a processor whose policy differs, so a policy is never applied twice or forgotten silently.
"""

from .ade20k import ADE20K_RAW_POLICY, load_ade20k
from .cityscapes import (
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_ID_POLICY,
    CityscapesLabel,
    cityscapes_label_map,
    load_cityscapes,
)
from ..label_policy import LabelPolicy
from .generic import load_image_label_dataset
from .label_marks import check_label_policy, label_policy_of
from .transforms import EvalTransform, TrainTransform, collate_same_size

# The command-line modules are imported on first use, so that `python -m fpn_seg.data.prepare` (or `.synthetic`)
# does not find its module already imported by this package.
_LAZY_ATTRIBUTES = {
    "load_prepared": "prepare",
    "prepare_ade20k": "prepare",
    "prepare_cityscapes": "prepare",
    "generate_street_scenes": "synthetic",
    "render_street_scene": "synthetic",
}


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADE20K_RAW_POLICY",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_ID_POLICY",
    "CityscapesLabel",
    "EvalTransform",
    "LabelPolicy",
    "TrainTransform",
    "check_label_policy",
    "cityscapes_label_map",
    "collate_same_size",
    "generate_street_scenes",
    "label_policy_of",
    "load_ade20k",
    "load_cityscapes",
    "load_image_label_dataset",
    "load_prepared",
    "prepare_ade20k",
    "prepare_cityscapes",
    "render_street_scene",
]
