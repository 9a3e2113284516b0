"""Reports of mean IoU results: the per-class table mmseg prints, and the files a training run leaves
(`eval_iou_table.txt`, `eval_confusion_matrix.json`).
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .trainer import _normalise_id2label, iou_metric_keys


def format_iou_table(
    results: Mapping[str, Any], id2label: Mapping[Any, str] | Sequence[str] | None = None, prefix: str = ""
) -> str:
    """A text table of per-class IoU and accuracy in percent (as mmseg prints it), followed by the means.

    `results` is either a [`MeanIoU.compute`] / [`mean_iou`] output (or `MeanIoUComputeMetrics.last_results`), or
    the flat metrics that `compute_metrics` returns, as the Trainer reports them (keys `<prefix>mean_iou`,
    `<prefix>iou_<name>`, e.g. `prefix="eval_"`; those carry no per-class accuracy, and need `id2label`). Classes
    without a value show `nan`.
    """
    if "per_category_iou" in results:
        ious = np.asarray(results["per_category_iou"], dtype=np.float64)
        accuracies = np.asarray(results["per_category_accuracy"], dtype=np.float64)
        names = _normalise_id2label(id2label, len(ious))
        means = {key: results[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    else:
        if id2label is None:
            raise ValueError("format_iou_table: flat Trainer metrics need id2label to find the per-class keys.")
        names = _normalise_id2label(id2label)
        keys = iou_metric_keys(names)
        ious = np.array([results.get(prefix + key, math.nan) for key in keys], dtype=np.float64)
        accuracies = None
        means = {key: results.get(prefix + key, math.nan) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}

    def percent(value: float) -> str:
        return "nan" if math.isnan(float(value)) else f"{100 * float(value):.2f}"

    rows = [
        (names[index], percent(ious[index]), "" if accuracies is None else percent(accuracies[index]))
        for index in range(len(ious))
    ]
    summary = [
        ("mean", percent(means["mean_iou"]), percent(means["mean_accuracy"])),
        ("overall accuracy", "", percent(means["overall_accuracy"])),
    ]
    header = ("Class", "IoU", "Acc")
    widths = [max(len(row[column]) for row in [header, *rows, *summary]) for column in range(3)]
    rule = "+" + "+".join("-" * (width + 2) for width in widths) + "+"

    def line(row: tuple[str, str, str]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2])]
        return "| " + " | ".join(cells) + " |"

    return "\n".join([rule, line(header), rule, *map(line, rows), rule, *map(line, summary), rule])


def save_evaluation_report(output_dir: str | os.PathLike, compute_metrics: Any, config) -> str:
    """Write `eval_iou_table.txt` and `eval_confusion_matrix.json` from the last evaluation of `compute_metrics` (a
    [`MeanIoUComputeMetrics`]), with the class names of `config`; returns the table."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = format_iou_table(compute_metrics.last_results, config.id2label)
    (output_dir / "eval_iou_table.txt").write_text(table + "\n", encoding="utf-8")
    num_labels = config.num_labels
    matrix = compute_metrics.last_confusion_matrix  # (C + 1, C + 1): last row / column count out-of-range values
    report = {
        "class_names": [config.id2label[index] for index in range(num_labels)],
        "rows": "reference class id",
        "columns": "predicted class id",
        "confusion_matrix": matrix[:num_labels, :num_labels].tolist(),
        "out_of_range_references": int(matrix[num_labels].sum()),
        "out_of_range_predictions": int(matrix[:, num_labels].sum()),
    }
    (output_dir / "eval_confusion_matrix.json").write_text(json.dumps(report) + "\n", encoding="utf-8")
    return table


__all__ = ["format_iou_table", "save_evaluation_report"]
