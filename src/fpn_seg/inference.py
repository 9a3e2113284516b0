"""mmsegmentation's test-time inference modes for a Semantic FPN model and its image processor.

- **whole** (mmseg's default for sem_fpn): the image resized to the test scale goes through the model at once.
- **slide**: overlapping `crop_size` windows every `stride` pixels (mmseg's `slide_inference`: a grid of
  `max(H - crop + stride - 1, 0) // stride + 1` positions per axis, windows clipped to the image, logits summed and
  divided by how many windows cover each pixel).
- **multi-scale + flip** (the "mIoU(ms+flip)" column): the test scale times each ratio of `scales`, each view with
  and without a horizontal flip; each view's logits are resized to the original size, turned into probabilities and
  un-flipped, the probabilities are averaged, and the argmax is taken last (mmseg 0.x's `aug_test`).

In every mode the logits of a view are resized to the original image size (bilinear, align_corners=False) before the
argmax. [`segment`] is the entry point; the other functions are its steps. Nothing is padded: images of different
sizes are never batched together, so an image's result does not depend on its batch neighbours.

By default [`segment`] runs an exact optimised copy of the model ([`prepare_model`]: BatchNorm folded into the convs,
channels_last, oneDNN convs; the eager model's logits up to float rounding); `optimize=False` runs the model as given.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .image_processing_semantic_fpn import SemanticFPNImageProcessor, image_to_tensor
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from .optimization import is_batch_norm_folded, optimize_for_inference

InferenceMode = Literal["whole", "slide"]
MMSEG_MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def model_device_and_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go and their float dtype: its `device` / `dtype` (transformers models, the ONNX Runtime
    model), else those of its first parameter."""
    device, dtype = getattr(model, "device", None), getattr(model, "dtype", None)
    if isinstance(device, torch.device) and isinstance(dtype, torch.dtype):
        return device, dtype
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def model_logits(model: nn.Module, pixel_values: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Run `model` on normalised `pixel_values` (B, 3, h, w): float32 logits (B, N, h, w) on the model's device.

    The one place where the model is called; `bf16` runs it under bfloat16 autocast.
    """
    device, dtype = model_device_and_dtype(model)
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(pixel_values=pixel_values, return_dict=True).logits
    return logits.float()


def whole_inference(model: nn.Module, pixel_values: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """mmseg's whole-image inference: logits (B, N, h, w) at the input size of `pixel_values` (B, 3, h, w)."""
    return model_logits(model, pixel_values, bf16)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a (height, width) pair of positive ints -> (height, width)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(side, (int, np.integer)) and side > 0 for side in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints; got {value!r}.")
    return int(pair[0]), int(pair[1])


def default_stride(crop_size: Sequence[int]) -> list[int]:
    """The slide step mmseg's configs pair with a crop: 2/3 of each side, rounded (512 -> 341, 1024 -> 683)."""
    return [max(1, round(side * 2 / 3)) for side in crop_size]


def _crop_and_stride(crop_size, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """Checked `((crop_h, crop_w), (stride_h, stride_w))`: a stride longer than the crop would leave pixels that no
    window covers (mmseg asserts that every pixel is covered)."""
    crop, step = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(
            f"stride {step} is larger than crop_size {crop}: pixels between the windows would get no logits; use a "
            f"stride of at most the crop size (mmseg's configs use 2/3 of it, e.g. crop 512 -> stride 341)."
        )
    return crop, step


def slide_windows(height: int, width: int, crop_size, stride) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window grid over a `height` x `width` image: `(y1, y2, x1, x2)` per window, row by row.

    Every window is `min(crop, image)` pixels on each axis; the last row/column is moved back inside the image.
    """
    (crop_h, crop_w), (stride_h, stride_w) = _crop_and_stride(crop_size, stride)
    h_grids = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(h_grids):
        for col in range(w_grids):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def slide_inference(
    model: nn.Module, pixel_values: torch.Tensor, crop_size, stride, bf16: bool = False
) -> torch.Tensor:
    """mmseg's `slide_inference`: logits (B, N, h, w) of `pixel_values` (B, 3, h, w), each pixel the mean of the
    logits of the windows covering it (see [`slide_windows`])."""
    height, width = pixel_values.shape[-2:]
    logit_sum, count = None, torch.zeros((1, 1, height, width))
    for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
        crop_logits = model_logits(model, pixel_values[:, :, y1:y2, x1:x2], bf16)  # (B, N, y2 - y1, x2 - x1)
        if logit_sum is None:
            logit_sum = crop_logits.new_zeros((*crop_logits.shape[:2], height, width))
        logit_sum[:, :, y1:y2, x1:x2] += crop_logits
        count[:, :, y1:y2, x1:x2] += 1
    return logit_sum / count.to(logit_sum.device)


def _inference_function(
    mode: InferenceMode, crop_size, stride, bf16: bool
) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The `(model, pixel_values) -> logits at the input size` function of `mode`, with its arguments checked."""
    if mode == "whole":
        return lambda model, pixel_values: whole_inference(model, pixel_values, bf16)
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError("mode='slide' needs crop_size and stride, e.g. crop_size=(512, 512), stride=(341, 341).")
        _crop_and_stride(crop_size, stride)
        return lambda model, pixel_values: slide_inference(model, pixel_values, crop_size, stride, bf16)
    raise ValueError(f"mode must be 'whole' or 'slide'; got {mode!r}.")


def view_logits(
    model: nn.Module,
    processor: SemanticFPNImageProcessor,
    images: torch.Tensor,
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    ratio: float = 1.0,
    flipped: bool = False,
) -> torch.Tensor:
    """Logits (B, N, H, W) at the original size of uint8 `images` (B, 3, H, W) for one test view: resized to the
    processor's test scale times `ratio`, normalised, flipped horizontally if `flipped` (the logits stay flipped)."""
    height, width = images.shape[-2:]
    size = processor.test_size(height, width, ratio=ratio)
    pixel_values = processor.normalize_image(processor.resize_image(images, size))  # (B, 3, h, w)
    if flipped:
        pixel_values = pixel_values.flip(-1)
    logits = infer(model, pixel_values)  # (B, N, h, w)
    if tuple(logits.shape[-2:]) != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


def multiscale_flip_inference(
    model: nn.Module,
    processor: SemanticFPNImageProcessor,
    images: torch.Tensor,
    scales: Sequence[float] = MMSEG_MS_RATIOS,
    flip: bool = True,
    mode: InferenceMode = "whole",
    crop_size=None,
    stride=None,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean class probabilities (B, N, H, W) of uint8 `images` (B, 3, H, W) over the views `scales` x (no flip,
    flip): per view, logits resized to the original size -> softmax -> un-flip; then the average."""
    infer = _inference_function(mode, crop_size, stride, bf16)
    views = [(ratio, flipped) for ratio in _check_scales(scales) for flipped in ((False, True) if flip else (False,))]
    total = None
    for ratio, flipped in views:
        probabilities = view_logits(model, processor, images, infer, ratio, flipped).softmax(dim=1)
        probabilities = probabilities.flip(-1) if flipped else probabilities
        total = probabilities if total is None else total + probabilities
    return total / len(views)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(ratio) for ratio in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive ratios, e.g. {MMSEG_MS_RATIOS}; got {scales!r}.")
    return scales


def prepare_model(model: nn.Module, optimize: bool = True) -> nn.Module:
    """The model inference runs: with `optimize`, `optimize_for_inference(model)` (the exact float32 path: a copy with
    BatchNorm folded into the convs, channels_last, oneDNN convs) for models that can fold their BatchNorms and are
    not folded yet; else `model` itself, in eval mode."""
    if optimize and isinstance(model, SemanticFPNForSemanticSegmentation) and not is_batch_norm_folded(model):
        return optimize_for_inference(model)
    return model.eval()


def _equal_size_batches(images: list[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of `images` grouped by size (first-seen order) and cut into batches of at most `batch_size`."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    return [
        group[start : start + batch_size] for group in groups.values() for start in range(0, len(group), batch_size)
    ]


def segment(
    model: nn.Module,
    processor: SemanticFPNImageProcessor,
    images: Any,
    mode: InferenceMode = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    flip: bool = False,
    batch_size: int = 1,
    bf16: bool = False,
    return_probabilities: bool = False,
    optimize: bool = True,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Segment images with one of mmseg's test protocols; returns one (H, W) int64 label map per image, at its
    original size, on the CPU.

    Args:
        model: a `SemanticFPNForSemanticSegmentation` (any model returning `logits` at the input size, such as
            `fpn_seg.deployment.ORTModelForSemanticSegmentation`); put in eval mode for the call (its training mode
            is restored afterwards).
        processor: gives the test scale, the normalisation and the resizing (see [`SemanticFPNImageProcessor`]).
        images: one image, a list, or a 4-D batch (array or tensor), in any form `image_to_tensor` reads (PIL,
            paths, arrays, tensors).
        mode: `"whole"` or `"slide"` (then `crop_size` and `stride`, ints or (height, width), are required).
        scales: ratios of the test scale for multi-scale testing, e.g. `MMSEG_MS_RATIOS`; `None`: one scale.
        flip: add a horizontally flipped view of every scale.
        batch_size: images per forward pass; only images of the same size are batched together.
        bf16: run the model under bfloat16 autocast.
        return_probabilities: also return one (N, H, W) float32 tensor of class probabilities per image (the
            averaged probabilities with `scales` / `flip`, else the softmax of the logits).
        optimize: run an exact optimised copy of the model ([`prepare_model`]; made once per call, so pass the
            result of `prepare_model(model)` yourself when calling `segment` in a loop); `False`: the model as given.

    Returns:
        `label_maps`, or `(label_maps, probabilities)` when `return_probabilities`.
    """
    infer = _inference_function(mode, crop_size, stride, bf16)
    if bf16 and not isinstance(model, nn.Module):
        raise ValueError(
            f"bf16=True runs a torch model under bfloat16 autocast; {type(model).__name__} runs at the precision it "
            "was loaded with (e.g. ORTModelForSemanticSegmentation.from_pretrained(folder, precision='int8'))."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    scales = None if scales is None else _check_scales(scales)
    several_views = scales is not None or flip
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:  # a batch (B, C, H, W) or (B, H, W, C)
        images = list(images)
    tensors = [image_to_tensor(image) for image in (images if isinstance(images, (list, tuple)) else [images])]
    label_maps: list[torch.Tensor | None] = [None] * len(tensors)
    probabilities: list[torch.Tensor | None] = [None] * len(tensors)
    was_training = model.training
    inference_model = prepare_model(model, optimize)  # `model` in eval mode, or an optimised copy
    try:
        with torch.inference_mode():
            for indices in _equal_size_batches(tensors, batch_size):
                batch = torch.stack([tensors[index] for index in indices])  # (B, 3, H, W) uint8
                if several_views:
                    scores = multiscale_flip_inference(
                        inference_model, processor, batch, scales or (1.0,), flip, mode, crop_size, stride, bf16
                    )
                else:
                    scores = view_logits(inference_model, processor, batch, infer)  # logits: argmax-equivalent
                for position, index in enumerate(indices):
                    label_maps[index] = scores[position].argmax(dim=0).cpu()
                    if return_probabilities:
                        image_scores = scores[position] if several_views else scores[position].softmax(dim=0)
                        probabilities[index] = image_scores.cpu().contiguous()
    finally:
        model.train(was_training)
    return (label_maps, probabilities) if return_probabilities else label_maps


__all__ = [
    "MMSEG_MS_RATIOS",
    "default_stride",
    "model_device_and_dtype",
    "model_logits",
    "multiscale_flip_inference",
    "prepare_model",
    "segment",
    "slide_inference",
    "slide_windows",
    "view_logits",
    "whole_inference",
]
