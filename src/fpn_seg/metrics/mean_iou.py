"""Mean IoU with exactly the semantics of `evaluate`'s `mean_iou` (itself mmsegmentation's), computed as a streaming
confusion matrix in torch on the device of the inputs.

Definition (per class `c`, over the whole dataset, on pixels whose reference is not `ignore_index`):

- `intersection[c]`: pixels where prediction == reference == c;
- `pred_area[c]`: pixels predicted as c; `label_area[c]`: pixels labelled c;
- `IoU[c] = intersection / (pred_area + label_area - intersection)`, NaN where that union is 0;
- `accuracy[c] = intersection / label_area`, NaN where the label area is 0;
- `mean_iou`, `mean_accuracy`: NaN-skipping means; `overall_accuracy = sum(intersection) / sum(label_area)`.

Values outside `0..num_labels-1` on counted pixels are not class ids: a prediction out of range still makes its pixel
count in the label area of its reference (a miss), and a reference out of range (other than `ignore_index`) still
makes its pixel count in the prediction area of the predicted class, exactly as evaluate's histograms over
`range(num_labels)` do. To keep these counts, the accumulator holds a `(num_labels + 1) ** 2` matrix whose last row
and column gather the out-of-range values; `MeanIoU.confusion_matrix` shows the `num_labels x num_labels` part.

Counting: per map, the (reference value, prediction value) pairs are counted with one `torch.bincount` over the
small grid of values present (256 x 256 at most for uint8 maps), in chunks of 1M pixels, and that grid is then folded
into the matrix through the label policy (evaluate's reading of `label_map` and `reduce_labels`,
`LabelPolicy.encode_as_evaluate`; then `ignore_index` and out-of-range values), so the policy costs nothing per
pixel. Maps with very wide value ranges take a per-pixel path with the same policy code.

Two ways in here: the plain function `mean_iou` (evaluate's signature) and the accumulator `MeanIoU`; the Trainer's
`compute_metrics` is in `fpn_seg.metrics.trainer`, the reports in `fpn_seg.metrics.reports`, and the `evaluate` module
shipped in `fpn_seg/metrics/mean_iou_metric/` runs `mean_iou`.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..label_policy import LabelPolicy

# Most (reference value, prediction value) pairs counted with one bincount before folding into the matrix; wider
# value ranges go through the label policy pixel by pixel.
_JOINT_HISTOGRAM_LIMIT = 1 << 18
# Pixels encoded at a time (int32 / int64 temporaries of 4 / 8 MiB).
_CHUNK_PIXELS = 1 << 20

SegmentationMaps = torch.Tensor | np.ndarray | Sequence[Any]


def _as_class_id_tensor(segmentation_map: Any, name: str, device: torch.device | None) -> torch.Tensor:
    """One class-id map (tensor, array, PIL image or nested list) -> an integer tensor on `device`.

    The integer dtype is kept (uint8 label maps are not widened); bool becomes uint8, integral floats int64.
    """
    if not isinstance(segmentation_map, torch.Tensor):
        array = np.asarray(segmentation_map)
        if array.dtype == object:
            raise TypeError(
                f"{name}: expected a class-id map (tensor, array or PIL image), got {type(segmentation_map)}."
            )
        if array.dtype.kind == "b":
            array = array.astype(np.uint8)
        elif not array.dtype.isnative or array.dtype.kind == "u" and array.dtype.itemsize > 1:
            array = array.astype(np.int64)  # big-endian, or uint16/32/64 (little supported by torch)
        elif not array.flags.writeable:
            array = array.copy()  # read-only (as PIL's): torch.from_numpy wants a writable buffer
        segmentation_map = torch.from_numpy(np.ascontiguousarray(array))
    if segmentation_map.dtype == torch.bool:
        segmentation_map = segmentation_map.to(torch.uint8)
    elif segmentation_map.is_floating_point():
        if not bool(torch.all(segmentation_map == segmentation_map.round())):
            raise TypeError(
                f"{name}: expected integer class ids, got non-integral {segmentation_map.dtype} values; take the "
                "argmax over the class dimension of logits first."
            )
        segmentation_map = segmentation_map.to(torch.int64)
    elif segmentation_map.is_complex():
        raise TypeError(f"{name}: expected integer class ids, got {segmentation_map.dtype}.")
    elif segmentation_map.dtype in (torch.uint16, torch.uint32, torch.uint64):
        segmentation_map = segmentation_map.to(torch.int64)
    return segmentation_map.to(device)


def _value_range(values: torch.Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor; the dtype's range for 8-bit maps (no pass over the data)."""
    if values.dtype == torch.uint8:
        return 0, 255
    if values.dtype == torch.int8:
        return -128, 127
    low, high = torch.aminmax(values)
    return int(low), int(high)


def _is_single_map(value: Any) -> bool:
    """A tensor, an array or a PIL image (as opposed to a sequence of maps)."""
    return isinstance(value, (torch.Tensor, np.ndarray)) or hasattr(value, "getpixel")


def _iterate_pairs(predictions: SegmentationMaps, references: SegmentationMaps) -> Iterable[tuple[Any, Any, str]]:
    """(prediction, reference, position) pairs from two maps / (B, H, W) batches, or from two sequences of maps."""
    if _is_single_map(predictions) and _is_single_map(references):
        yield predictions, references, ""
        return
    for name, value in (("predictions", predictions), ("references", references)):
        if not (_is_single_map(value) or isinstance(value, Sequence)):
            raise TypeError(
                f"{name}: expected a tensor, an array, a PIL image or a sequence of them, got {type(value)}."
            )
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    for position, (prediction, reference) in enumerate(zip(predictions, references)):
        yield prediction, reference, f"[{position}]"


class MeanIoU:
    """Streaming confusion matrix for mean IoU, with evaluate's `mean_iou` semantics (see the module docstring).

    The state is one int64 `(num_labels + 1, num_labels + 1)` matrix (rows: reference, columns: prediction, last row
    and column: values outside `0..num_labels-1`), kept on the device of the first tensors given to `update`; no
    map is retained between calls, so memory does not depend on the number of images.

    Args:
        num_labels: number of classes `C`; class ids are `0..C-1`.
        ignore_index: reference value whose pixels are not counted.
        reduce_labels: apply evaluate's `reduce_labels` to references (0 -> 255, `v` -> `v - 1`, 255 stays).
        label_map: raw reference value -> class id, applied to references before `reduce_labels` (values not named
            are kept), as evaluate's `label_map`.

    The three make `reference_policy`, read with evaluate's semantics ([`LabelPolicy.encode_as_evaluate`]), not
    the processor's. References encoded by the processor (the Trainer's labels) need neither option.
        device: where the matrix lives; by default the device of the first tensor passed to `update`.

    Example:
        >>> metric = MeanIoU(num_labels=19)
        >>> for predicted, label in batches:  # each (B, H, W) or (H, W), tensors or arrays
        ...     metric.update(predicted, label)
        >>> metric.all_reduce()  # only when each process saw a different shard (no-op without torch.distributed)
        >>> metric.compute()["mean_iou"]
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        reduce_labels: bool = False,
        label_map: Mapping[int, int] | None = None,
        device: torch.device | str | None = None,
    ):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"MeanIoU: num_labels must be a positive int, got {num_labels!r}.")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"MeanIoU: ignore_index must be an int, got {ignore_index!r}.")
        self.num_labels = num_labels
        self.ignore_index = int(ignore_index)
        self.reference_policy = LabelPolicy(
            reduce_labels, label_map, self.ignore_index, description="evaluate's mean_iou reading of references"
        )
        self._device_fixed = device is not None
        self._counts = torch.zeros((num_labels + 1) ** 2, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self._counts.device

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """(C, C) int64 counts: row = reference class, column = predicted class (out-of-range values left out)."""
        size = self.num_labels + 1
        return self._counts.view(size, size)[: self.num_labels, : self.num_labels].clone()

    @property
    def full_confusion_matrix(self) -> torch.Tensor:
        """(C + 1, C + 1) int64 counts; the last row / column count references / predictions outside `0..C-1`."""
        size = self.num_labels + 1
        return self._counts.view(size, size).clone()

    def reset(self) -> None:
        """Zero the counts (the device is kept)."""
        self._counts.zero_()

    def update(self, predictions: SegmentationMaps, references: SegmentationMaps) -> "MeanIoU":
        """Add class-id maps: one (H, W) map, a (B, H, W) batch, or two equally long sequences of maps of any sizes
        (tensors, NumPy arrays or PIL images). Predictions and references of a pair must have the same shape."""
        for prediction, reference, position in _iterate_pairs(predictions, references):
            self._update_pair(prediction, reference, position)
        return self

    def _update_pair(self, prediction: Any, reference: Any, position: str) -> None:
        if not self._device_fixed:
            first_tensor = next((x for x in (prediction, reference) if isinstance(x, torch.Tensor)), None)
            if first_tensor is not None:
                self._counts = self._counts.to(first_tensor.device)
                self._device_fixed = True
        prediction = _as_class_id_tensor(prediction, f"predictions{position}", self.device)
        reference = _as_class_id_tensor(reference, f"references{position}", self.device)
        if prediction.shape != reference.shape:
            raise ValueError(
                f"predictions{position} has shape {tuple(prediction.shape)} but references{position} has shape "
                f"{tuple(reference.shape)}; they must match (resize predictions to the label size first)."
            )
        if prediction.dim() not in (2, 3):
            raise ValueError(
                f"predictions{position}: expected a (H, W) map or a (B, H, W) batch of class ids, got shape "
                f"{tuple(prediction.shape)} (for (B, num_labels, H, W) logits take argmax(dim=1) first)."
            )
        if prediction.numel() == 0:
            return
        self._counts += self._pair_counts(prediction.flatten(), reference.flatten())

    def _pair_counts(self, prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Flat `(C + 1) ** 2` counts of (reference row, prediction column) over the pixels that are not ignored.

        When the value ranges are small (always for uint8 maps), the (reference value, prediction value) pairs
        are counted first (one `bincount` over `span_ref * span_pred` bins) and that small histogram is folded
        into the matrix through the label policy; otherwise the policy is applied to every pixel.
        """
        reference_low, reference_high = _value_range(reference)
        prediction_low, prediction_high = _value_range(prediction)
        reference_span = reference_high - reference_low + 1
        prediction_span = prediction_high - prediction_low + 1
        # pair code = (reference - reference_low) * prediction_span + (prediction - prediction_low), computed in
        # int32 when the intermediate reference * prediction_span + prediction fits (half the traffic of int64)
        largest = max(abs(reference_low), abs(reference_high)) * prediction_span
        largest += max(abs(prediction_low), abs(prediction_high))
        if reference_span * prediction_span > _JOINT_HISTOGRAM_LIMIT or largest >= 2**62:
            flat_index = self._rows_of_values(reference.to(torch.int64))
            flat_index += self._columns_of_values(prediction.to(torch.int64))
            size = self.num_labels + 1  # ignored pixels land past size * size: dropped
            return torch.bincount(flat_index, minlength=size * size + size)[: size * size]
        code_dtype = torch.int32 if largest < 2**31 and prediction.dtype != torch.int64 else torch.int64
        offset = reference_low * prediction_span + prediction_low
        pair_counts = torch.zeros(reference_span * prediction_span, dtype=torch.int64, device=reference.device)
        for start in range(0, reference.numel(), _CHUNK_PIXELS):  # bounded temporaries on large maps
            chunk = slice(start, start + _CHUNK_PIXELS)
            code = reference[chunk].to(code_dtype, copy=True).mul_(prediction_span).add_(prediction[chunk])
            if offset:
                code.sub_(offset)
            pair_counts += torch.bincount(code, minlength=reference_span * prediction_span)
            del code  # freed before the next chunk's is made
        rows = self._rows_of_values(torch.arange(reference_low, reference_high + 1, device=pair_counts.device))
        columns = self._columns_of_values(torch.arange(prediction_low, prediction_high + 1, device=pair_counts.device))
        return self._fold((rows[:, None] + columns[None, :]).flatten(), pair_counts)

    def _fold(self, flat_index: torch.Tensor, pair_counts: torch.Tensor) -> torch.Tensor:
        """Sum `pair_counts` into the flat matrix at `flat_index`; ignored entries (index `(C + 1) ** 2` and above)
        are dropped."""
        size = self.num_labels + 1
        folded = torch.zeros(size * size + size, dtype=torch.int64, device=flat_index.device)
        return folded.index_add_(0, flat_index, pair_counts)[: size * size]

    def _rows_of_values(self, values: torch.Tensor) -> torch.Tensor:
        """int64 reference values -> their offset in the flat matrix: `row * (C + 1)` after the label policy, the
        out-of-range row `C` for values outside `0..C-1`, and `(C + 1) ** 2` for ignored values."""
        values = self.reference_policy.encode_as_evaluate(values)
        size = self.num_labels + 1
        rows = torch.where((values >= 0) & (values < self.num_labels), values, self.num_labels) * size
        return rows.masked_fill_(values == self.ignore_index, size * size)

    def _columns_of_values(self, values: torch.Tensor) -> torch.Tensor:
        """int64 predicted values -> columns: the class id, or the out-of-range column `C`."""
        return torch.where((values >= 0) & (values < self.num_labels), values, self.num_labels)

    def all_reduce(self, group: Any = None) -> "MeanIoU":
        """Sum the counts over the processes of `group` with `torch.distributed` (no-op when it is not initialised).

        Call it once, right before `compute`, and only when each process counted a different part of the data
        (the Trainer's `batch_eval_metrics` path does not need it: see `MeanIoUComputeMetrics`).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        counts = self._counts
        if dist.get_backend(group) == "nccl" and counts.device.type != "cuda":
            counts = counts.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
        self._counts = counts.to(self._counts.device)
        return self

    def total_areas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(intersection, union, pred_area, label_area) per class as float64 arrays of shape (C,), as evaluate's
        `total_intersect_and_union`."""
        size = self.num_labels + 1
        matrix = self._counts.view(size, size).cpu().numpy().astype(np.float64)
        intersection = np.diagonal(matrix)[: self.num_labels].copy()
        pred_area = matrix[:, : self.num_labels].sum(axis=0)  # every counted reference, in range or not
        label_area = matrix[: self.num_labels, :].sum(axis=1)  # every prediction, in range or not
        union = pred_area + label_area - intersection
        return intersection, union, pred_area, label_area

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """evaluate's `mean_iou` output: `mean_iou`, `mean_accuracy`, `overall_accuracy` (NumPy float64 scalars),
        `per_category_iou`, `per_category_accuracy` ((C,) float64 arrays; NaN for classes with no union / no label
        pixel). `nan_to_num` replaces the NaNs of every entry, as evaluate's."""
        intersection, union, _, label_area = self.total_areas()
        with np.errstate(divide="ignore", invalid="ignore"):
            overall_accuracy = intersection.sum() / label_area.sum()
            per_category_iou = intersection / union
            per_category_accuracy = intersection / label_area
        results = {
            "mean_iou": _nanmean(per_category_iou),
            "mean_accuracy": _nanmean(per_category_accuracy),
            "overall_accuracy": overall_accuracy,
            "per_category_iou": per_category_iou,
            "per_category_accuracy": per_category_accuracy,
        }
        if nan_to_num is not None:
            results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
        return results


def _nanmean(values: np.ndarray) -> np.float64:
    """`np.nanmean` without its all-NaN warning (the result is NaN then, as evaluate's)."""
    if np.isnan(values).all():
        return np.float64(np.nan)
    return np.nanmean(values)


def mean_iou(
    predictions: SegmentationMaps,
    references: SegmentationMaps,
    num_labels: int,
    ignore_index: int,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """evaluate's `mean_iou.compute` as a plain function (same arguments, same output; see [`MeanIoU.compute`]).

    `predictions` / `references`: (H, W) maps, (B, H, W) batches, or sequences of maps of any sizes; tensors (any
    device), NumPy arrays or PIL images. Maps are counted one at a time; none is kept.
    """
    metric = MeanIoU(num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels, label_map=label_map)
    return metric.update(predictions, references).compute(nan_to_num=nan_to_num)


__all__ = [
    "MeanIoU",
    "SegmentationMaps",
    "mean_iou",
]
