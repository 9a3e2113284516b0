"""Mean IoU in the Trainer: `compute_metrics` for `Trainer(batch_eval_metrics=True)` (a streaming [`MeanIoU`] fed one
batch at a time, the Trainer's cross-process label padding cropped away), its logits hook, and the flat metric keys
(`mean_iou`, `iou_<class>`) it logs.
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .mean_iou import MeanIoU

# The label value with which the Trainer pads labels across processes (`pad_across_processes(pad_index=-100)`).
TRAINER_PADDING_INDEX = -100


def _metric_key(prefix: str, class_name: str, taken: set[str]) -> str:
    """`iou_traffic_light` for "traffic light": characters that loggers dislike become `_`; duplicates get `_<n>`."""
    key = prefix + re.sub(r"[^0-9A-Za-z_.\-]+", "_", str(class_name).strip())
    unique, suffix = key, 1
    while unique in taken:
        suffix += 1
        unique = f"{key}_{suffix}"
    taken.add(unique)
    return unique


def iou_metric_keys(id2label: Mapping[Any, str] | Sequence[str] | int) -> list[str]:
    """The flat metric key of each class's IoU, `iou_<name>` (`iou_traffic_light`), as `compute_metrics` logs them;
    `id2label` may be a number of classes (names `class_<i>`)."""
    names = _normalise_id2label(None, id2label) if isinstance(id2label, int) else _normalise_id2label(id2label)
    taken: set[str] = {"mean_iou", "mean_accuracy", "overall_accuracy"}
    return [_metric_key("iou_", names[index], taken) for index in range(len(names))]


def _normalise_id2label(
    id2label: Mapping[Any, str] | Sequence[str] | None, num_labels: int | None = None
) -> dict[int, str]:
    """{class id: name} for ids `0..num_labels-1` (default: as many as `id2label` names), `class_<i>` if unnamed."""
    if id2label is None:
        names = {}
    elif isinstance(id2label, Mapping):
        names = {int(index): str(name) for index, name in id2label.items()}
    else:
        names = dict(enumerate(map(str, id2label)))
    if num_labels is None:
        num_labels = max(names, default=-1) + 1
    return {index: names.get(index, f"class_{index}") for index in range(num_labels)}


def _unpadded_size(label: torch.Tensor) -> tuple[int, int]:
    """(height, width) of an (H, W) label map without the Trainer's bottom/right padding with -100 (real labels,
    ignored pixels included, are never -100)."""
    real = label != TRAINER_PADDING_INDEX
    rows, columns = real.any(dim=1).nonzero(), real.any(dim=0).nonzero()
    if len(rows) == 0:
        return 0, 0
    return int(rows.max()) + 1, int(columns.max()) + 1


class MeanIoUComputeMetrics:
    """`compute_metrics` for `Trainer(batch_eval_metrics=True)`: a streaming [`MeanIoU`] fed one batch at a time.

    The Trainer calls it once per evaluation batch with `EvalPrediction(predictions=logits, label_ids=labels)` and
    `compute_result=True` on the last batch. Per batch it takes the (B, C, h, w) logits (or (B, H, W) class ids made
    by `preprocess_logits_for_metrics`), resizes logits to the (B, H, W) labels' size (bilinear,
    `align_corners=False`, as mmseg evaluates at the original label resolution), takes the argmax, and counts;
    no batch is kept. Labels must already be encoded with the model's label policy (training ids and
    `ignore_index`); the Trainer's cross-process padding value -100 is counted as ignored.

    Processes: in transformers' `evaluation_loop` (batch mode) the logits and labels of every batch go through
    `accelerator.gather_for_metrics` *before* `compute_metrics` is called, so every process receives the whole
    global batch (and the duplicated samples that pad the last batch are already dropped). Each process's matrix
    then already holds the counts of the whole dataset; all-reducing them would multiply every count by the number
    of processes. So with the Trainer (`inputs_gathered=True`, the default) nothing is all-reduced; with your own
    loop where each process passes only its own shard, set `inputs_gathered=False` and the matrices are summed with
    `torch.distributed.all_reduce` at `compute_result=True`.

    Pass `preprocess_logits_for_metrics=compute_metrics.preprocess_logits_for_metrics` to the Trainer as well: the
    argmax then runs before that gather, which moves 1-byte class ids instead of C float logits per pixel. The
    Trainer pads the labels' height across processes (with -100) before calling it; that is handled image by image.
    It pads nothing else, so label widths must agree across processes (`fpn_seg.train.SemanticFPNTrainer` pads both).

    At `compute_result=True` it returns a flat dict of Python floats for the Trainer's logs: `mean_iou`,
    `mean_accuracy`, `overall_accuracy` and `iou_<class name>` per class, then resets for the next evaluation; the
    full evaluate-style result stays in `last_results` (for [`format_iou_table`]) and the (C + 1, C + 1) counts in
    `last_confusion_matrix` (see `MeanIoU.full_confusion_matrix`). Classes absent from both
    predictions and labels have no IoU (NaN): their `iou_<name>` key is left out, unless `nan_to_num` is given,
    in which case NaNs (also a NaN mean when nothing was counted) become that number. (A NaN would be logged and
    written to `trainer_state.json` as the non-standard JSON token `NaN`; leaving the key out keeps the files
    standard JSON.) Before the last batch it returns `{}`.
    """

    def __init__(
        self,
        num_labels: int,
        id2label: Mapping[Any, str] | Sequence[str] | None = None,
        ignore_index: int = 255,
        inputs_gathered: bool = True,
        nan_to_num: float | None = None,
    ):
        self.metric = MeanIoU(num_labels, ignore_index=ignore_index)
        self.id2label = _normalise_id2label(id2label, num_labels)
        self.inputs_gathered = inputs_gathered
        self.nan_to_num = nan_to_num
        self.last_results: dict[str, Any] | None = None
        self.last_confusion_matrix: torch.Tensor | None = None
        self._iou_keys = iou_metric_keys(self.id2label)

    @property
    def num_labels(self) -> int:
        return self.metric.num_labels

    def predict_classes(self, logits: torch.Tensor | np.ndarray, label_size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) logits -> (B, H, W) int64 class ids at `label_size`, one image at a time (bilinear,
        `align_corners=False`, then argmax over classes; argmax ties go to the lower class id)."""
        logits = torch.as_tensor(logits)
        if logits.dim() != 4 or logits.shape[1] != self.num_labels:
            raise ValueError(
                f"compute_metrics: expected (batch, {self.num_labels}, height, width) logits, got shape "
                f"{tuple(logits.shape)}."
            )
        predicted = []
        for image_logits in logits:  # (C, h, w): at most one upsampled image of logits at a time
            if tuple(image_logits.shape[-2:]) != tuple(label_size):
                image_logits = F.interpolate(
                    image_logits[None].float(), size=tuple(label_size), mode="bilinear", align_corners=False
                )[0]  # (C, H, W)
            predicted.append(image_logits.argmax(dim=0))
        return torch.stack(predicted)  # (B, H, W)

    def preprocess_logits_for_metrics(self, logits: Any, labels: torch.Tensor | None) -> torch.Tensor:
        """The Trainer's `preprocess_logits_for_metrics`: (B, C, h, w) logits -> (B, H, W) class ids at the labels'
        size, as uint8 when `num_labels <= 256` (int32 otherwise) so that the cross-process gather stays small.

        The Trainer may already have padded the labels (at the bottom, with -100) to the largest height among
        processes: each image's logits are resized to its own unpadded label size, and the padding stays out of the
        count. Without labels (`Trainer.predict` on unlabelled data): class ids at the logits' size."""
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        dtype = torch.uint8 if self.num_labels <= 256 else torch.int32
        if labels is None:
            return self.predict_classes(logits, tuple(logits.shape[-2:])).to(dtype)
        labels = torch.as_tensor(labels)
        labels = labels.reshape(labels.shape[0], *labels.shape[-2:])  # (B, H, W), also from (B, 1, H, W)
        predicted = torch.zeros(labels.shape, dtype=dtype, device=labels.device)
        for index, label in enumerate(labels):
            height, width = _unpadded_size(label)
            if height and width:
                image_logits = logits[index : index + 1]
                predicted[index, :height, :width] = self.predict_classes(image_logits, (height, width))[0].to(dtype)
        return predicted

    def __call__(self, eval_prediction: Any, compute_result: bool = True) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]  # the logits come first in the model's output
        labels = torch.as_tensor(labels)
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]  # (B, 1, H, W) -> (B, H, W)
        if labels.dim() != 3:
            raise ValueError(f"compute_metrics: expected (batch, height, width) labels, got {tuple(labels.shape)}.")
        predictions = torch.as_tensor(predictions)
        if predictions.dim() == 4:
            predictions = self.predict_classes(predictions, tuple(labels.shape[-2:]))
        labels = labels.masked_fill(labels == TRAINER_PADDING_INDEX, self.metric.ignore_index)
        self.metric.update(predictions, labels)
        if not compute_result:
            return {}
        return self._finish()

    def _finish(self) -> dict[str, float]:
        if not self.inputs_gathered:
            self.metric.all_reduce()
        self.last_results = self.metric.compute()
        self.last_confusion_matrix = self.metric.full_confusion_matrix.cpu()
        self.metric.reset()
        return flatten_results(self.last_results, self._iou_keys, self.nan_to_num)


def flatten_results(results: Mapping[str, Any], iou_keys: Sequence[str], nan_to_num: float | None) -> dict[str, float]:
    """`MeanIoU.compute` output -> a flat dict of floats; per-class NaNs are left out unless `nan_to_num` is set."""

    def clean(value: float) -> float:
        value = float(value)
        return nan_to_num if nan_to_num is not None and math.isnan(value) else value

    flat = {key: clean(results[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    for key, value in zip(iou_keys, results["per_category_iou"]):
        if nan_to_num is not None or not math.isnan(value):
            flat[key] = clean(value)
    return flat


def make_compute_metrics(
    config_or_num_labels: Any,
    id2label: Mapping[Any, str] | Sequence[str] | None = None,
    *,
    ignore_index: int | None = None,
    inputs_gathered: bool = True,
    nan_to_num: float | None = None,
) -> MeanIoUComputeMetrics:
    """A [`MeanIoUComputeMetrics`] for `Trainer(compute_metrics=..., args=TrainingArguments(batch_eval_metrics=True))`.

    Args:
        config_or_num_labels: a model config (its `num_labels`, `id2label`, `ignore_index` are used) or a number of
            classes.
        id2label: class names (overrides the config's); default `class_<i>`.
        ignore_index: label value to skip (default: the config's, else 255).
        inputs_gathered: `True` for the Trainer, which gathers every batch across processes before calling
            `compute_metrics`; `False` when each process passes only its own data (the counts are then all-reduced).
        nan_to_num: value for classes with no IoU instead of leaving their keys out.
    """
    if isinstance(config_or_num_labels, int) and not isinstance(config_or_num_labels, bool):
        num_labels, config_names, config_ignore = config_or_num_labels, None, None
    elif hasattr(config_or_num_labels, "num_labels"):
        config = config_or_num_labels
        num_labels, config_names = config.num_labels, getattr(config, "id2label", None)
        config_ignore = getattr(config, "ignore_index", None)
    else:
        raise TypeError(
            "make_compute_metrics: config_or_num_labels must be a model config or an int, got "
            f"{type(config_or_num_labels)}."
        )
    return MeanIoUComputeMetrics(
        num_labels,
        id2label=id2label if id2label is not None else config_names,
        ignore_index=next(value for value in (ignore_index, config_ignore, 255) if value is not None),
        inputs_gathered=inputs_gathered,
        nan_to_num=nan_to_num,
    )


__all__ = ["TRAINER_PADDING_INDEX", "MeanIoUComputeMetrics", "flatten_results", "iou_metric_keys", "make_compute_metrics"]
