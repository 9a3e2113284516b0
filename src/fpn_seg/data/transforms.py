"""mmsegmentation's training and evaluation data pipelines, for `with_transform` and for `fpn-seg train`.

    train = dataset["train"].with_transform(TrainTransform(processor, crop_size=(512, 1024)))
    val = dataset["validation"].with_transform(EvalTransform(processor))

[`TrainTransform`] is mmseg 1.x's `sem_fpn` training pipeline, step by step:

1. decode; encode the label map with the processor's label policy (`label_map`, `reduce_labels`) **first**, as mmseg's
   `LoadAnnotations` does, so the crop below counts training ids;
2. `RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`: `r ~ U(ratio_range)`, target scale
   `(int(long * r), int(short * r))`, keep-ratio factor `f = min(long' / max(h, w), short' / min(h, w))`, new size
   `int(h * f + 0.5), int(w * f + 0.5)`; image bilinear without antialiasing (rounded to uint8), label nearest;
3. `RandomCrop(crop_size, cat_max_ratio=0.75)`: up to 10 retries while the most frequent non-ignored class fills
   `>= cat_max_ratio` of the crop (or only one class is present); the last draw is kept;
4. `RandomFlip(prob=0.5)`, horizontal;
5. `PhotoMetricDistortion` on uint8: brightness +-32, contrast 0.5..1.5, saturation 0.5..1.5, hue +-18 (numpy's
   `randint(-18, 18)`: -18..17), each with p=0.5, contrast before or after the HSV steps at random; every step
   rounds down to uint8 as mmseg's `convert` does (applied as 256-entry lookup tables: the same arithmetic per
   value); HSV follows OpenCV's 8-bit conversion (H in 0..179, fixed-point tables);
6. normalise (processor's mean/std), then pad bottom/right to `crop_size`: the image with 0 **after** normalisation
   (mmseg 1.x's `SegDataPreProcessor(pad_val=0, seg_pad_val=255)`), the label with `ignore_index`.

Steps 2-5 are [`TrainTransform.augment_example`], step 6 [`TrainTransform.finish`]. Only the crop is computed: the
label map is resized inside each candidate crop only (nearest neighbour picks source pixels), its classes counted with
one `bincount`, and the image resized inside the chosen crop only (a window of a bilinear resize is exactly that window
of the whole resize). The kernels are OpenCV's, bit for bit: `fpn_seg.opencv_exact` in torch on any device, or OpenCV
itself in DataLoader workers when it is installed (`fpn_seg.data.image_ops`); every backend gives the same bytes for
the same random draws, which always come from a CPU `torch.Generator`.

**Randomness.** Each example gets its own `torch.Generator`, seeded from a per-call base and the example's position
in the batch, so an example's augmentation never depends on its neighbours. The per-call base is:

- `seed=None`: drawn from torch's global RNG, which the `Trainer` seeds from `TrainingArguments.seed`: runs are
  reproducible, but a resumed run does not replay the same augmentations (the `Trainer` restores its RNG state only
  after the dataloader has prefetched a batch). In DataLoader workers it is the worker's RNG, which torch seeds
  differently per worker and per epoch from the main process's RNG. `fpn_seg.train` does not use this path: it seeds
  each example from (data seed, epoch, index), which resumes exactly.
- `seed=<int>`: a private stream `hash(seed, worker seed, call number)`; the worker seed is
  `torch.utils.data.get_worker_info().seed` inside a DataLoader worker (so workers differ) and 0 outside. Two
  transforms with the same seed give identical outputs for the same sequence of calls, independent of global RNG
  state (but a resumed `Trainer` run restarts the call count).

[`EvalTransform`] is the processor's test-time path: pixel values resized to the test scale, labels encoded but kept
at their **original resolution** (mmseg evaluates there). Images of different sizes give tensors of different sizes:
evaluate with batch size 1, or collate with [`collate_same_size`] (which stacks equal sizes and says what to do
otherwise).
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.nn import functional as F

from ..image_processing_semantic_fpn import SemanticFPNImageProcessor
from ..image_reading import image_to_tensor, label_to_tensor, open_image
from ..opencv_exact import hsv_to_rgb_uint8, resize_nearest, rgb_to_hsv_uint8
from ..optional_opencv import load_opencv
from .augmentation import (
    AugmentationPlan,
    ColourSteps,
    LabelCoder,
    crop_box_draws,
    has_varied_classes,
    keep_ratio_size,
    mix_seed,
    photometric_distortion,
    photometric_with_ops,
    random_crop_box,
    uniform_draw,
)
from .image_ops import TorchImageOps, image_ops
from .label_marks import check_label_policy


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the setting.

    Per-example tensors are small: thread start-up and synchronisation cost more than they save there, and far more
    on a busy machine (measured 35x slower with 2 threads on 2 loaded cores). DataLoader workers already use one.
    OpenCV's threads (when it is installed) are turned off likewise.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2 = load_opencv()
    opencv_threads = cv2.getNumThreads() if cv2 is not None else None
    if opencv_threads not in (None, 1):
        cv2.setNumThreads(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if opencv_threads not in (None, 1):
            cv2.setNumThreads(opencv_threads)


# ------------------------------------------------------------------------------------------------ transforms


class TrainTransform:
    """mmseg's training pipeline for `Dataset.with_transform` (the module docstring details each step and the seeding).

    Args:
        processor: a `SemanticFPNImageProcessor`: label policy, resize kernels, mean/std, default scale.
        crop_size: `(height, width)` of the crops (and of every output, after padding).
        scale: `(long side, short side)` the random ratio multiplies; defaults to `processor.scale`.
        ratio_range: bounds of the uniform resize ratio.
        cat_max_ratio: `RandomCrop`'s limit on the largest class's share of a crop (1.0: no retries).
        flip_prob: probability of a horizontal flip.
        photometric: apply `PhotoMetricDistortion`.
        seed: `None` (draws from torch's global RNG) or an int (a private, reproducible stream).
        image_column, label_column: the batch's columns.

    Called on a batch `{"image": [...], "label": [...]}` (PIL images, arrays, tensors or paths), returns
    `{"pixel_values": [float32 (3, h, w)], "labels": [int64 (h, w)]}` with `(h, w) = crop_size`.
    """

    def __init__(
        self,
        processor: SemanticFPNImageProcessor,
        crop_size: Sequence[int],
        scale: Sequence[int] | None = None,
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        seed: int | None = None,
        image_column: str = "image",
        label_column: str = "label",
    ):
        if len(crop_size) != 2 or min(crop_size) <= 0:
            raise ValueError(f"TrainTransform: crop_size must be (height, width) > 0, got {crop_size!r}.")
        scale = processor.scale if scale is None else scale
        if scale is None:
            raise ValueError(
                f"TrainTransform: the processor's size {processor.size} has no (long side, short side) scale for the "
                "random resize; pass scale=(long side, short side)."
            )
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"TrainTransform: scale must be (long side, short side) > 0, got {scale!r}.")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(
                f"TrainTransform: ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}."
            )
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"TrainTransform: flip_prob must be in [0, 1], got {flip_prob}.")
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"TrainTransform: cat_max_ratio must be in (0, 1], got {cat_max_ratio}.")
        self.processor = processor
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio, self.flip_prob, self.photometric = float(cat_max_ratio), float(flip_prob), photometric
        self.seed, self.image_column, self.label_column = seed, image_column, label_column
        self._calls = 0
        self._labels = LabelCoder(processor.label_policy)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric}, "
            f"seed={self.seed})"
        )

    def _call_seed(self) -> int:
        if self.seed is None:
            return int(torch.randint(0, 2**62, ()).item())
        worker = torch.utils.data.get_worker_info()
        self._calls += 1
        return mix_seed(self.seed, 0 if worker is None else worker.seed % 2**62, self._calls)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        images, labels = _columns(batch, self.image_column, self.label_column, type(self).__name__)
        call_seed = self._call_seed()
        output: dict[str, list[torch.Tensor]] = {"pixel_values": [], "labels": []}
        with single_threaded():
            for position, (image, label) in enumerate(zip(images, labels)):
                check_label_policy(label, self.processor)
                generator = torch.Generator().manual_seed(mix_seed(call_seed, position))
                image, raw_labels = image_to_tensor(image), raw_label_tensor(label)
                pixel_values, label_ids = self.transform_example(image, raw_labels, generator)
                output["pixel_values"].append(pixel_values)
                output["labels"].append(label_ids)
        return output

    def transform_example(
        self, image: torch.Tensor, raw_labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One example: uint8 (3, H, W) image and raw (H, W) labels -> float32 (3, h, w), int64 (h, w), with `(h, w)`
        the crop size: [`augment_example`] then [`finish`]."""
        return self.finish(*self.augment_example(image, raw_labels, generator))

    def augment_example(
        self, image: torch.Tensor, raw_labels: torch.Tensor, generator: torch.Generator, ops=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 2-5 (random resize, crop with `cat_max_ratio`, flip, photometric distortion) of one example, on the
        tensors' device: uint8 (3, H, W) image and raw (H, W) labels (before the label policy; uint8 keeps them
        small) -> uint8 (3, h, w) crop and its int64 (h, w) training ids, `(h, w)` at most the crop size (smaller
        when the resized image is). `ops`: the image backend (`fpn_seg.data.image_ops`); default OpenCV for CPU
        tensors when installed, else the torch kernels. Every backend and device gives the same bytes.

        The same as [`plan_example`] (every draw, and the label map's share of the work) then [`apply_plan`] (the
        image's share), which the device path runs in two places: the plan in a DataLoader worker, the image on the
        training device."""
        if image.shape[-2:] != raw_labels.shape:
            raise ValueError(
                f"TrainTransform: image size {tuple(image.shape[-2:])} and label size {tuple(raw_labels.shape)} "
                "differ."
            )
        plan, labels = self.plan_example(raw_labels, generator)
        return self.apply_plan(image, plan, ops), labels

    def plan_example(
        self, raw_labels: torch.Tensor, generator: torch.Generator
    ) -> tuple["AugmentationPlan", torch.Tensor]:
        """Every random draw of one example, in mmseg's order, and its augmented label crop: raw (H, W) labels ->
        ([`AugmentationPlan`], int64 (h, w) training ids). Label maps are cheap (nearest resize inside each candidate
        crop, one `bincount` per candidate): the crop's `cat_max_ratio` test runs here, on the labels' device,
        without touching the image."""
        ratio = uniform_draw(generator, *self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = keep_ratio_size(*raw_labels.shape[-2:], scale)

        def varied(box: tuple[int, int, int, int]) -> bool:
            return has_varied_classes(self._labels.class_counts(resize_nearest(raw_labels, size, box)), self.cat_max_ratio)

        box = crop_box_draws(size, self.crop_size, generator, varied, self.cat_max_ratio)
        labels = self._labels.encode(resize_nearest(raw_labels, size, box))  # (h, w) int64
        flip = bool(torch.rand((), generator=generator).item() < self.flip_prob)
        if flip:
            labels = labels.flip(-1)
        colour = ColourSteps()
        if self.photometric:
            photometric_with_ops(None, generator, colour)
        return AugmentationPlan(size, box, flip, tuple(colour.steps)), labels

    def apply_plan(self, image: torch.Tensor, plan: "AugmentationPlan", ops=None) -> torch.Tensor:
        """The image's share of [`plan_example`]'s plan: uint8 (3, H, W) -> the uint8 (3, h, w) crop, resized,
        flipped and colour-distorted as planned, with `ops` (see [`augment_example`]) on the image's device."""
        if ops is None:
            ops = image_ops() if image.device.type == "cpu" else TorchImageOps
        pixels = ops.resize(ops.from_tensor(image), plan.size, plan.box)
        if plan.flip:
            pixels = ops.flip(pixels)
        for channel, table in plan.colour:
            table = torch.from_numpy(table)
            pixels = ops.lookup(pixels, table) if channel is None else ops.adjust_hsv(pixels, channel, table)
        return ops.to_tensor(pixels)

    def finish(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 6, on the tensors' device: uint8 (3, h, w) -> normalised float32 (3, crop_h, crop_w), padded at the
        bottom / right with 0 after normalising; int64 labels padded with `ignore_index`."""
        pixel_values = self.processor.normalize_image(image.contiguous())
        pad_bottom, pad_right = self.crop_size[0] - labels.shape[0], self.crop_size[1] - labels.shape[1]
        if pad_bottom or pad_right:
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom), value=0.0)
            labels = F.pad(labels, (0, pad_right, 0, pad_bottom), value=self.processor.ignore_index)
        return pixel_values, labels.contiguous()


def raw_label_tensor(label: Any) -> torch.Tensor:
    """A segmentation map as [`label_to_tensor`] reads it, but 8-bit maps (PIL modes L and P, uint8 arrays) stay
    uint8 (8x less memory and transfer than int64; the label policy is applied later, by lookup)."""
    if isinstance(label, (str, os.PathLike)):
        label = open_image(label)
    if isinstance(label, PIL.Image.Image) and label.mode in ("L", "P"):
        return torch.from_numpy(np.array(label))
    if isinstance(label, np.ndarray) and label.dtype == np.uint8 and label.ndim == 2:
        return torch.from_numpy(label.copy())
    return label_to_tensor(label)


class EvalTransform:
    """The processor's test-time path for `Dataset.with_transform`: pixel values at the test scale, labels encoded at
    their original resolution.

    Returns `{"pixel_values": [float32 (3, h_i, w_i)], "labels": [int64 (H_i, W_i)]}`; sizes vary with the images, so
    use batch size 1 or [`collate_same_size`].
    """

    def __init__(self, processor: SemanticFPNImageProcessor, image_column: str = "image", label_column: str = "label"):
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.processor.size}, do_resize={self.processor.do_resize})"

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        images, labels = _columns(batch, self.image_column, self.label_column, type(self).__name__)
        output: dict[str, list[torch.Tensor]] = {"pixel_values": [], "labels": []}
        with single_threaded():
            for image, label in zip(images, labels):
                self._append_example(output, image, label)
        return output

    def _append_example(self, output: dict[str, list[torch.Tensor]], image: Any, label: Any) -> None:
        check_label_policy(label, self.processor)
        image = image_to_tensor(image)
        label_ids = self.processor.encode_labels(label_to_tensor(label))
        if image.shape[-2:] != label_ids.shape:
            raise ValueError(
                f"EvalTransform: image size {tuple(image.shape[-2:])} and label size {tuple(label_ids.shape)} differ."
            )
        output["pixel_values"].append(self.processor.preprocess(image, return_tensors=None)["pixel_values"][0])
        output["labels"].append(label_ids)


def _columns(batch: dict[str, list[Any]], image_column: str, label_column: str, who: str) -> tuple[list, list]:
    missing = [column for column in (image_column, label_column) if column not in batch]
    if missing:
        raise KeyError(
            f"{who}: the batch has no column(s) {missing}; columns: {sorted(batch)}. Name yours with "
            "image_column=... and label_column=... (or load the data with load_image_label_dataset, which renames)."
        )
    images, labels = batch[image_column], batch[label_column]
    if not isinstance(images, (list, tuple)):  # a single example (`dataset.with_transform` always passes lists)
        images, labels = [images], [labels]
    return list(images), list(labels)


def collate_same_size(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` and `labels` of examples whose tensors have equal sizes (a `DataLoader` `collate_fn`).

    Evaluation keeps each label map at its original size, so a batch of differently sized images cannot be stacked:
    that raises a `ValueError` asking for batch size 1 (`per_device_eval_batch_size=1`).
    """
    batch = {}
    for key in ("pixel_values", "labels"):
        shapes = sorted({tuple(example[key].shape) for example in examples})
        if len(shapes) > 1:
            raise ValueError(
                f"collate_same_size: {key} of different sizes {shapes} in one batch; evaluation keeps labels at their "
                "original resolution (as mmseg), so use batch size 1 (per_device_eval_batch_size=1) for datasets "
                "with mixed image sizes."
            )
        batch[key] = torch.stack([example[key] for example in examples])
    return batch


__all__ = [
    "AugmentationPlan",
    "EvalTransform",
    "TrainTransform",
    "collate_same_size",
    "hsv_to_rgb_uint8",
    "keep_ratio_size",
    "mix_seed",
    "photometric_distortion",
    "random_crop_box",
    "raw_label_tensor",
    "rgb_to_hsv_uint8",
    "single_threaded",
]
