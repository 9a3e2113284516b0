"""Mean IoU for semantic segmentation with evaluate's `mean_iou` semantics: the streaming confusion matrix
[`MeanIoU`] and the plain function [`mean_iou`] (`mean_iou.py`), a `compute_metrics` for
`Trainer(batch_eval_metrics=True)` (`trainer.py`: [`make_compute_metrics`]), reports (`reports.py`: the table
[`format_iou_table`], the files of a run), and an offline `evaluate` module: `evaluate.load(EVALUATE_MODULE_PATH)`.
"""

from pathlib import Path

from .mean_iou import MeanIoU, mean_iou
from .reports import format_iou_table, save_evaluation_report
from .trainer import MeanIoUComputeMetrics, flatten_results, iou_metric_keys, make_compute_metrics

# Folder of the `evaluate` module shipped with the package (the script inside has the folder's name).
EVALUATE_MODULE_PATH = str(Path(__file__).parent / "mean_iou_metric")

__all__ = [
    "EVALUATE_MODULE_PATH",
    "MeanIoU",
    "MeanIoUComputeMetrics",
    "flatten_results",
    "format_iou_table",
    "iou_metric_keys",
    "make_compute_metrics",
    "mean_iou",
    "save_evaluation_report",
]
