"""The one inference path: processor -> model -> post-processing, on the model's device, in mmseg's test modes.

[`SemanticSegmenter`] binds a model, prepared once ([`PreparedModel`]: the exact optimised copy, the precision,
CUDA graphs), to its image processor. For every batch of images:

1. the processor (`preprocess(..., device=...)`) sends the uint8 images to the model's device and resizes and
   normalises them there (the OpenCV-exact resize gives the same bits on any device); images of different sizes
   come as one padded batch with a `pixel_mask`;
2. the prepared model gives float32 logits at the processed size: **whole** (one call), **slide** (mmseg's
   sliding windows, each window one call, the logits of overlapping windows averaged), each image of a padded batch
   alone on its own region;
3. the processor's `post_process_semantic_segmentation` resizes the logits to each image's original size and
   takes the argmax, on the device; **multi-scale + flip** averages the per-view probabilities (softmax of the
   resized logits, un-flipped) before the argmax, as mmseg's `aug_test`.

Only the label maps (and the probabilities, when asked) leave the device. `fpn_seg.segment`, `fpn-seg predict`, the
app and `fpn_seg.inference`'s functions all run through it.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from .image_reading import image_to_tensor
from .modeling_semantic_fpn import SemanticFPNSegmenterOutput, image_sizes_of, logits_per_image
from .prepared_model import DEFAULT_MAX_GRAPH_PIXELS, DEFAULT_MAX_GRAPHS, PreparedModel

InferenceMode = Literal["whole", "slide"]
MMSEG_MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# ------------------------------------------------------------------------------------------------ mmseg's test modes


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a (height, width) pair of positive ints -> (height, width)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(side, (int, np.integer)) and side > 0 for side in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints; got {value!r}.")
    return int(pair[0]), int(pair[1])


def default_stride(crop_size: Sequence[int]) -> list[int]:
    """The slide step mmseg's configs pair with a crop: 2/3 of each side, rounded (512 -> 341, 1024 -> 683)."""
    return [max(1, round(side * 2 / 3)) for side in crop_size]


def check_crop_and_stride(crop_size, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """Checked `((crop_h, crop_w), (stride_h, stride_w))`: a stride longer than the crop would leave pixels that no
    window covers (mmseg asserts that every pixel is covered)."""
    crop, step = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(
            f"stride {step} is larger than crop_size {crop}: pixels between the windows would get no logits; use a "
            f"stride of at most the crop size (mmseg's configs use 2/3 of it, e.g. crop 512 -> stride 341)."
        )
    return crop, step


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """`scales` as positive float ratios of the test scale; a `ValueError` otherwise."""
    scales = tuple(float(ratio) for ratio in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive ratios, e.g. {MMSEG_MS_RATIOS}; got {scales!r}.")
    return scales


def slide_windows(height: int, width: int, crop_size, stride) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid over a `height` x `width` image: `(y1, y2, x1, x2)` per window, row by row.

    A grid of `max(H - crop + stride - 1, 0) // stride + 1` positions per axis; every window is `min(crop, image)`
    pixels on each axis; the last row/column is moved back inside the image.
    """
    (crop_h, crop_w), (stride_h, stride_w) = check_crop_and_stride(crop_size, stride)
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(h_grids):
        for col in range(w_grids):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_logits(
    compute_logits: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor, crop_size, stride
) -> torch.Tensor:
    """mmseg's `slide_inference`: logits (B, N, h, w) of `pixel_values` (B, 3, h, w), each pixel the mean of the
    logits of the windows covering it (see [`slide_windows`]); `compute_logits` maps a window to its logits."""
    height, width = pixel_values.shape[-2:]
    logit_sum, count = None, torch.zeros((1, 1, height, width), device=pixel_values.device)
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        crop_logits = compute_logits(pixel_values[:, :, y1:y2, x1:x2])  # (B, N, y2 - y1, x2 - x1)
        if logit_sum is None:
            logit_sum = crop_logits.new_zeros((*crop_logits.shape[:2], height, width))
        logit_sum[:, :, y1:y2, x1:x2] += crop_logits
        count[:, :, y1:y2, x1:x2] += 1
    return logit_sum / count


def _flip_images(pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
    """Each image flipped horizontally within its own region (top left of a padded batch)."""
    if image_sizes is None:
        return pixel_values.flip(-1)
    flipped = torch.zeros_like(pixel_values)
    for index, (height, width) in enumerate(image_sizes.tolist()):
        flipped[index, :, :height, :width] = pixel_values[index, :, :height, :width].flip(-1)
    return flipped


# ------------------------------------------------------------------------------------------------ errors


class SegmentationOutOfMemoryError(torch.OutOfMemoryError):
    """An image that does not fit in the device's memory even alone. `image` names it (a file, or its position in
    the call), `size` is its (height, width)."""

    def __init__(self, image: str, size: tuple[int, int], device: torch.device, reason: str):
        self.image, self.size = image, size
        super().__init__(
            f"{image} ({size[0]}x{size[1]}) does not fit in the memory of {device}, even alone: {reason}. Segment it "
            "with mode='slide' (--mode slide --crop-size H W), precision='fp16' (--fp16), or on the CPU "
            "(--device cpu); or free the device's memory."
        )


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ the segmenter


class SemanticSegmenter:
    """A model and its image processor, ready to segment images with mmseg's test modes (see the module docstring).

    Everything prepared for speed is prepared once, here: the exact optimised copy of the model on `device`, the
    precision switch and the CUDA graph cache ([`PreparedModel`]); calls reuse it. If the model's weights change
    afterwards (training, `load_state_dict`), the next call prepares it again: a segmenter never runs stale weights.

    Args:
        model: a `SemanticFPNForSemanticSegmentation` (or a model with its interface, such as
            `fpn_seg.deployment.ORTModelForSemanticSegmentation`, which runs as given on the CPU).
        processor: its `SemanticFPNImageProcessor` (test scale, normalisation, resizing, post-processing).
        device: where inference runs (default: where the model is); the model itself is not moved, its optimised
            copy is made there.
        precision: "fp32" (exact: the eager model's logits up to float rounding), "fp16" (float16 autocast, GPUs)
            or "bf16" (bfloat16 autocast).
        optimize: run the exact optimised copy (BatchNorm folded, channels_last; oneDNN convs on the CPU);
            `False`: the model as given.
        cuda_graphs: replay CUDA graphs for repeated input shapes (default: on for the optimised copy on a GPU).
        max_graphs, max_graph_pixels: the bounds of the graph cache (shapes kept; batch x height x width).
        capture: the CUDA graph capture function (default `fpn_seg.cuda_graphs.capture_cuda_graph`; the tests run
            the cache's logic on the CPU with a stand-in).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        optimize: bool = True,
        cuda_graphs: bool | None = None,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        max_graph_pixels: int | None = DEFAULT_MAX_GRAPH_PIXELS,
        capture=None,
    ):
        self.model, self.processor, self.precision = model, processor, precision
        self._options = {
            "device": device, "optimize": optimize, "cuda_graphs": cuda_graphs, "max_graphs": max_graphs,
            "max_graph_pixels": max_graph_pixels, "capture": capture,
        }  # fmt: skip
        self.prepared = PreparedModel.of(model, **self._options)
        self.prepared.check_precision(precision)

    @property
    def device(self) -> torch.device:
        return self.prepared.device

    def current(self) -> PreparedModel:
        """The prepared model, prepared again first if the model's weights changed since."""
        if not self.prepared.is_current_for(self.model):
            self.prepared = PreparedModel.of(self.model, **self._options)
        return self.prepared

    def __call__(self, images: Any, **options) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.segment(images, **options)

    def segment(
        self,
        images: Any,
        mode: InferenceMode = "whole",
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        flip: bool = False,
        batch_size: int = 1,
        return_probabilities: bool = False,
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One (H, W) int64 label map per image, at its original size, on the CPU (and, with
        `return_probabilities`, one (N, H, W) float32 tensor of class probabilities per image).

        `images`: one image, a list, or a 4-D batch, in any form `image_to_tensor` reads (PIL, paths, arrays,
        tensors). Images of the same size are batched together, `batch_size` at a time. See `fpn_seg.segment`
        for the modes; an image that does not fit in the device's memory even alone raises a
        [`SegmentationOutOfMemoryError`] naming it.
        """
        options = self.check_options(mode, crop_size, stride, scales, batch_size)
        if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:  # a batch (B, C, H, W) or (B, H, W, C)
            images = list(images)
        tensors = [image_to_tensor(image) for image in (images if isinstance(images, (list, tuple)) else [images])]
        label_maps: list[torch.Tensor | None] = [None] * len(tensors)
        probabilities: list[torch.Tensor | None] = [None] * len(tensors)
        prepared = self.current()  # the weights' check, once per call
        for indices in _equal_size_batches(tensors, batch_size):
            names = [f"image {index}" for index in indices]
            maps, scores, failures = self._segment_batch(
                prepared, [tensors[index] for index in indices], names, scales=scales, flip=flip,
                return_probabilities=return_probabilities, **options,
            )  # fmt: skip
            if failures:
                raise next(iter(failures.values()))
            for position, index in enumerate(indices):
                label_maps[index] = maps[position].cpu()
                if return_probabilities:
                    probabilities[index] = scores[position].cpu().contiguous()
        return (label_maps, probabilities) if return_probabilities else label_maps

    @staticmethod
    def check_options(mode, crop_size, stride, scales, batch_size: int = 1) -> dict:
        """The mode's options, checked (a `ValueError` naming the argument): `{"mode", "crop_size", "stride"}`."""
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide'; got {mode!r}.")
        if mode == "slide":
            if crop_size is None or stride is None:
                raise ValueError(
                    "mode='slide' needs crop_size and stride, e.g. crop_size=(512, 512), stride=(341, 341)."
                )
            check_crop_and_stride(crop_size, stride)
        if scales is not None:
            check_scales(scales)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        return {"mode": mode, "crop_size": crop_size, "stride": stride}

    def segment_batch(
        self,
        images: list[torch.Tensor],
        names: Sequence[str] | None = None,
        mode: InferenceMode = "whole",
        crop_size=None,
        stride=None,
        scales: Sequence[float] | None = None,
        flip: bool = False,
        return_probabilities: bool = False,
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None] | None, dict[int, SegmentationOutOfMemoryError]]:
        """One batch of uint8 (3, H, W) images (of any sizes) -> `(label_maps, probabilities, failures)`, all on the
        device: (H, W) int64 label maps, (N, H, W) probabilities with `return_probabilities` (else None).

        When the device runs out of memory, the images are tried again one by one; an image that fails alone
        gets None and a [`SegmentationOutOfMemoryError`] naming it (from `names`) in `failures` (position ->
        error). The model runs in eval mode (its training mode is restored afterwards).
        """
        names = list(names) if names is not None else [f"image {index}" for index in range(len(images))]
        return self._segment_batch(self.current(), images, names, mode, crop_size, stride, scales, flip,
                                   return_probabilities)  # fmt: skip

    def _segment_batch(self, prepared, images, names, mode="whole", crop_size=None, stride=None, scales=None,
                       flip=False, return_probabilities=False):  # fmt: skip
        model = self.model
        was_training = bool(getattr(model, "training", False))
        try:
            if was_training and not prepared.optimized:
                model.eval()
            with torch.inference_mode():
                try:
                    maps, scores = self._run_views(prepared, images, mode, crop_size, stride, scales, flip,
                                                   return_probabilities)  # fmt: skip
                    return maps, scores, {}
                except torch.OutOfMemoryError as error:
                    if len(images) == 1:
                        size = tuple(images[0].shape[-2:])
                        raise SegmentationOutOfMemoryError(names[0], size, prepared.device, str(error)) from error
                _release_cached_memory(prepared.device)
                maps, scores, failures = [], [] if return_probabilities else None, {}
                for position, image in enumerate(images):
                    try:
                        (label_map,), image_scores = self._run_views(
                            prepared, [image], mode, crop_size, stride, scales, flip, return_probabilities
                        )
                    except torch.OutOfMemoryError as error:
                        _release_cached_memory(prepared.device)
                        size = tuple(image.shape[-2:])
                        failures[position] = SegmentationOutOfMemoryError(names[position], size, prepared.device,
                                                                          str(error).splitlines()[0])  # fmt: skip
                        label_map, image_scores = None, [None]
                    maps.append(label_map)
                    if return_probabilities:
                        scores.append(image_scores[0])
                return maps, scores, failures
        finally:
            if was_training and not prepared.optimized:
                model.train()

    def _run_views(self, prepared, images, mode, crop_size, stride, scales, flip, return_probabilities):
        """(label maps, probabilities or None) of one batch on the device (see `segment_batch`)."""
        sizes = [tuple(image.shape[-2:]) for image in images]
        if not self.processor.do_resize and scales is not None and len(set(sizes)) > 1:
            # Without a test scale the views' sizes are the images' own times the ratio: one image at a time.
            results = [self._run_views(prepared, [image], mode, crop_size, stride, scales, flip,
                                       return_probabilities) for image in images]  # fmt: skip
            maps = [label_maps[0] for label_maps, _ in results]
            return maps, ([scores[0] for _, scores in results] if return_probabilities else None)
        several_views = scales is not None or flip
        views = [(ratio, flipped) for ratio in (scales or (1.0,)) for flipped in ((False, True) if flip else (False,))]
        total = None
        for ratio, flipped in views:
            outputs = self._view_logits(prepared, images, sizes[0], ratio, flipped, mode, crop_size, stride)
            if not several_views and not return_probabilities:
                return self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes), None
            resized = self.processor.post_process_semantic_segmentation(
                outputs, target_sizes=sizes, return_segmentation_scores=True
            )
            if not several_views:
                maps = [result["segmentation"] for result in resized]
                return maps, [result["segmentation_scores"].softmax(dim=0) for result in resized]
            probabilities = [result["segmentation_scores"].softmax(dim=0) for result in resized]  # each (N, H, W)
            probabilities = [item.flip(-1) for item in probabilities] if flipped else probabilities
            total = probabilities if total is None else [sum_ + item for sum_, item in zip(total, probabilities)]
        probabilities = [item / len(views) for item in total]
        return [item.argmax(dim=0) for item in probabilities], (probabilities if return_probabilities else None)

    def _view_logits(self, prepared, images, size, ratio, flipped, mode, crop_size, stride):
        """The model's outputs (logits at the processed size, `image_sizes` of a padded batch) for one test view:
        the processor's test scale times `ratio`, flipped horizontally if `flipped` (the logits stay flipped)."""
        features = self.processor(images, return_tensors="pt", device=prepared.device, **self._view_scale(ratio, size))
        pixel_values, pixel_mask = features["pixel_values"], features.get("pixel_mask")
        image_sizes = image_sizes_of(pixel_mask) if pixel_mask is not None else None
        if flipped:
            pixel_values = _flip_images(pixel_values, image_sizes)

        def compute_logits(batch: torch.Tensor) -> torch.Tensor:
            return prepared.logits(batch, self.precision)

        if mode == "slide":
            def run(batch):
                return slide_logits(compute_logits, batch, crop_size, stride)

            logits = run(pixel_values) if image_sizes is None else logits_per_image(run, pixel_values, image_sizes)
        else:
            logits = prepared.logits(pixel_values, self.precision, image_sizes)
        return SemanticFPNSegmenterOutput(logits=logits, image_sizes=image_sizes)

    def _view_scale(self, ratio: float, size: tuple[int, int]) -> dict:
        """Processor options for the test size times `ratio` (mmseg's `MultiScaleFlipAug`: `(int(long * ratio),
        int(short * ratio))`, of the image's own size when the processor does not resize)."""
        if ratio == 1.0:
            return {}
        return {"do_resize": True, "size": self.processor.size_at_ratio(ratio, *size)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prepared!r}, precision={self.precision!r})"


def _equal_size_batches(images: list[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of `images` grouped by size (first-seen order) and cut into batches of at most `batch_size`."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    return [
        group[start : start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)
    ]


__all__ = [
    "InferenceMode",
    "MMSEG_MS_RATIOS",
    "SegmentationOutOfMemoryError",
    "SemanticSegmenter",
    "check_crop_and_stride",
    "check_scales",
    "default_stride",
    "slide_logits",
    "slide_windows",
]
