"""mmsegmentation's test-time inference modes for a Semantic FPN model and its image processor: [`segment`].

- **whole** (mmseg's default for sem_fpn): the image resized to the test scale goes through the model at once.
- **slide**: overlapping `crop_size` windows every `stride` pixels (mmseg's `slide_inference`: a grid of
  `max(H - crop + stride - 1, 0) // stride + 1` positions per axis, windows clipped to the image, logits summed and
  divided by how many windows cover each pixel).
- **multi-scale + flip** (the "mIoU(ms+flip)" column): the test scale times each ratio of `scales`, each view with
  and without a horizontal flip; each view's logits are resized to the original size, turned into probabilities and
  un-flipped, the probabilities are averaged, and the argmax is taken last (mmseg 0.x's `aug_test`).

In every mode the logits of a view are resized to the original image size (bilinear, align_corners=False) before the
argmax. Images of different sizes are never batched together, so an image's result does not depend on its batch
neighbours.

Everything runs through the one inference path, `fpn_seg.segmenter.SemanticSegmenter` (processor -> model ->
post-processing, on the model's device). By default [`segment`] runs an exact optimised copy of the model
(BatchNorm folded into the convs, channels_last; oneDNN convs on the CPU, CUDA graphs on a GPU: the eager model's
logits up to float rounding), prepared once per model and reused by later calls as long as the model's weights do
not change; `optimize=False` runs the model as given.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .image_processing_semantic_fpn import SemanticFPNImageProcessor
from .prepared_model import PreparedModel, model_device_and_dtype
from .segmenter import (
    MMSEG_MS_RATIOS,
    InferenceMode,
    SemanticSegmenter,
    default_stride,
    slide_logits,
    slide_windows,
)


def _precision(bf16: bool, precision: str | None) -> str:
    if bf16 and precision not in (None, "bf16"):
        raise ValueError(f"bf16=True and precision={precision!r} disagree; pass one of them.")
    return precision or ("bf16" if bf16 else "fp32")


def whole_inference(model: nn.Module, pixel_values: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """mmseg's whole-image inference: float32 logits (B, N, h, w) at the input size of `pixel_values` (B, 3, h, w),
    on the model's device; the model runs as given (`bf16`: under bfloat16 autocast)."""
    return PreparedModel.of(model, optimize=False).logits(pixel_values, _precision(bf16, None))


def slide_inference(
    model: nn.Module, pixel_values: torch.Tensor, crop_size, stride, bf16: bool = False
) -> torch.Tensor:
    """mmseg's `slide_inference`: logits (B, N, h, w) of `pixel_values` (B, 3, h, w), each pixel the mean of the
    logits of the windows covering it (see [`slide_windows`]); the model runs as given."""
    prepared, precision = PreparedModel.of(model, optimize=False), _precision(bf16, None)
    return slide_logits(lambda window: prepared.logits(window, precision), pixel_values, crop_size, stride)


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
    flip): per view, logits resized to the original size -> softmax -> un-flip; then the average. The model runs
    as given."""
    segmenter = SemanticSegmenter(model, processor, precision=_precision(bf16, None), optimize=False)
    options = segmenter.check_options(mode, crop_size, stride, scales)
    _, probabilities, failures = segmenter.segment_batch(
        list(images), scales=scales, flip=flip, return_probabilities=True, **options
    )
    if failures:
        raise next(iter(failures.values()))
    return torch.stack(probabilities)


def prepare_model(model: nn.Module, optimize: bool = True) -> nn.Module:
    """The module inference runs: with `optimize`, the exact optimised copy (BatchNorm folded into the convs,
    channels_last, oneDNN convs) for models that can fold their BatchNorms and are not folded yet, the same copy
    [`segment`] reuses; else `model` itself, in eval mode."""
    prepared = PreparedModel.of(model, optimize=optimize)
    return prepared.model if prepared.optimized else model.eval()


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
    *,
    precision: str | None = None,
    device: str | torch.device | None = None,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Segment images with one of mmseg's test protocols; returns one (H, W) int64 label map per image, at its
    original size, on the CPU.

    Args:
        model: a `SemanticFPNForSemanticSegmentation` (any model returning `logits` at the input size, such as
            `fpn_seg.deployment.ORTModelForSemanticSegmentation`); runs in eval mode (a model run as given gets its
            training mode back afterwards).
        processor: gives the test scale, the normalisation and the resizing (see [`SemanticFPNImageProcessor`]).
        images: one image, a list, or a 4-D batch (array or tensor), in any form `image_to_tensor` reads (PIL,
            paths, arrays, tensors).
        mode: `"whole"` or `"slide"` (then `crop_size` and `stride`, ints or (height, width), are required).
        scales: ratios of the test scale for multi-scale testing, e.g. `MMSEG_MS_RATIOS`; `None`: one scale.
        flip: add a horizontally flipped view of every scale.
        batch_size: images per forward pass; only images of the same size are batched together.
        bf16: run the model under bfloat16 autocast (the same as `precision="bf16"`).
        return_probabilities: also return one (N, H, W) float32 tensor of class probabilities per image (the
            averaged probabilities with `scales` / `flip`, else the softmax of the logits).
        optimize: run the exact optimised copy of the model (prepared on the first call and reused while the
            model's weights stay the same); `False`: the model as given.
        precision: "fp32" (default), "fp16" (float16 autocast, GPUs) or "bf16".
        device: where to run (default: where the model is); the optimised copy is made there.

    Returns:
        `label_maps`, or `(label_maps, probabilities)` when `return_probabilities`. For many calls, build a
        `fpn_seg.SemanticSegmenter` once and call it.
    """
    options = SemanticSegmenter.check_options(mode, crop_size, stride, scales, batch_size)
    if bf16 and not isinstance(model, nn.Module):
        raise ValueError(
            f"bf16=True runs a torch model under bfloat16 autocast; {type(model).__name__} runs at the precision it "
            "was loaded with (e.g. ORTModelForSemanticSegmentation.from_pretrained(folder, precision='int8'))."
        )
    segmenter = SemanticSegmenter(model, processor, device=device, precision=_precision(bf16, precision),
                                  optimize=optimize)  # fmt: skip
    return segmenter.segment(images, scales=scales, flip=flip, batch_size=batch_size,
                             return_probabilities=return_probabilities, **options)  # fmt: skip


__all__ = [
    "MMSEG_MS_RATIOS",
    "SemanticSegmenter",
    "default_stride",
    "model_device_and_dtype",
    "multiscale_flip_inference",
    "prepare_model",
    "segment",
    "slide_inference",
    "slide_windows",
    "whole_inference",
]
