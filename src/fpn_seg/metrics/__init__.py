"""Mean IoU for semantic segmentation with evaluate's `mean_iou` semantics: a streaming confusion matrix
([`MeanIoU`]), the plain function [`mean_iou`], a `compute_metrics` for `Trainer(batch_eval_metrics=True)`
([`make_compute_metrics`]), a text table ([`format_iou_table`]), and an offline `evaluate` module:
`evaluate.load(EVALUATE_MODULE_PATH)`.
"""

from pathlib import Path

from .mean_iou import (
    MeanIoU,
    MeanIoUComputeMetrics,
    apply_label_map,
    flatten_results,
    format_iou_table,
    iou_metric_keys,
    make_compute_metrics,
    mean_iou,
    reduce_reference_labels,
)

# Folder of the `evaluate` module shipped with the package (the script inside has the folder's name).
EVALUATE_MODULE_PATH = str(Path(__file__).parent / "mean_iou_metric")

__all__ = [
    "EVALUATE_MODULE_PATH",
    "MeanIoU",
    "MeanIoUComputeMetrics",
    "apply_label_map",
    "flatten_results",
    "format_iou_table",
    "iou_metric_keys",
    "make_compute_metrics",
    "mean_iou",
    "reduce_reference_labels",
]
