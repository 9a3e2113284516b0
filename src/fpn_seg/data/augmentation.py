"""The random draws of mmseg's training augmentation, and the pieces they act on: the seed mixing, the photometric
distortion's lookup tables, the keep-ratio size, the crop draws with their `cat_max_ratio` test, the label policy as a
lookup table, and [`AugmentationPlan`], one example's draws. [`TrainTransform`](transforms.py) makes the draws with
these and applies them; the module docstring of `transforms.py` details each step and the seeding.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..label_policy import LabelPolicy
from ..opencv_exact import HUE_RANGE
from ..processor_options import output_size, size_from_scale
from .image_ops import TorchImageOps, convert_table


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, e.g. (data seed, epoch, example index): the same in every process and run (the
    one seed-mixing scheme of the package: augmentation draws and the training order)."""
    entropy = [int(value) & 0xFFFF_FFFF_FFFF_FFFF for value in values]  # SeedSequence takes non-negative ints
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def uniform_draw(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def randint_draw(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high), as numpy's `randint`."""
    return int(torch.randint(low, high, (), generator=generator).item())


# ------------------------------------------------------------------------------------------------ colour


def photometric_with_ops(image, generator: torch.Generator, ops, brightness_delta: int = 32,
                 contrast_range: tuple[float, float] = (0.5, 1.5), saturation_range: tuple[float, float] = (0.5, 1.5),
                 hue_delta: int = 18):  # fmt: skip
    """mmseg's `PhotoMetricDistortion` with `ops`' image operations. Brightness and contrast are value-to-value maps:
    consecutive ones are composed into one lookup table (exact: a table of tables) and applied once."""
    pending: list[torch.Tensor | None] = [None]  # a lookup table not applied yet

    def add(table: torch.Tensor) -> None:
        pending[0] = table if pending[0] is None else table[pending[0].long()]

    def flush(image):
        image, pending[0] = ops.lookup(image, pending[0]), None
        return image

    def contrast() -> None:
        if randint_draw(generator, 0, 2):
            add(convert_table(alpha=uniform_draw(generator, *contrast_range)))

    if randint_draw(generator, 0, 2):
        add(convert_table(beta=uniform_draw(generator, -brightness_delta, brightness_delta)))
    contrast_first = randint_draw(generator, 0, 2) == 1
    if contrast_first:
        contrast()
    if randint_draw(generator, 0, 2):  # saturation: S -> convert(S, alpha)
        image = ops.adjust_hsv(flush(image), 1, convert_table(alpha=uniform_draw(generator, *saturation_range)))
    if randint_draw(generator, 0, 2):  # hue: H -> (H + delta) mod 180
        delta = randint_draw(generator, -hue_delta, hue_delta)
        hue_table = torch.remainder(torch.arange(256) + delta, HUE_RANGE).to(torch.uint8)
        image = ops.adjust_hsv(flush(image), 0, hue_table)
    if not contrast_first:
        contrast()
    return flush(image)


def photometric_distortion(
    image: torch.Tensor,
    generator: torch.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg's `PhotoMetricDistortion` on a (3, H, W) uint8 RGB image (any device), with draws from `generator`."""
    return photometric_with_ops(
        image, generator, TorchImageOps, brightness_delta, contrast_range, saturation_range, hue_delta
    )


# ------------------------------------------------------------------------------------------------ geometry


def keep_ratio_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's `rescale_size`: the largest size keeping the ratio that fits `scale` (long, short), as (h, w); the
    processor's keep-ratio rule (`processor_options.output_size`)."""
    return output_size(size_from_scale(scale, "RandomResize"), height, width)


def random_crop_box(
    labels: torch.Tensor,
    crop_size: tuple[int, int],
    generator: torch.Generator,
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    max_retries: int = 10,
) -> tuple[int, int, int, int]:
    """mmseg's `RandomCrop.crop_bbox`: `(top, bottom, left, right)` of a crop of (encoded) `labels` (H, W), clipped
    to the map.

    With `cat_max_ratio < 1`, redraws up to `max_retries` times until the crop holds at least two non-ignored classes
    and the largest covers less than `cat_max_ratio` of the non-ignored pixels; the last draw is used otherwise.
    """

    def varied(box: tuple[int, int, int, int]) -> bool:
        values, counts = torch.unique(labels[box[0] : box[1], box[2] : box[3]], return_counts=True)
        return has_varied_classes(counts[values != ignore_index], cat_max_ratio)

    return crop_box_draws(tuple(labels.shape[-2:]), crop_size, generator, varied, cat_max_ratio, max_retries)


def crop_box_draws(size, crop_size, generator, varied, cat_max_ratio: float, max_retries: int = 10):
    """The draws of mmseg's `RandomCrop.crop_bbox` on a map of `size`; `varied(box)` judges a candidate crop."""
    height, width = size
    margin_h, margin_w = max(height - crop_size[0], 0), max(width - crop_size[1], 0)

    def draw() -> tuple[int, int, int, int]:
        top, left = randint_draw(generator, 0, margin_h + 1), randint_draw(generator, 0, margin_w + 1)
        return top, min(top + crop_size[0], height), left, min(left + crop_size[1], width)

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(max_retries):
            if varied(box):
                break
            box = draw()
    return box


def has_varied_classes(counts: torch.Tensor, cat_max_ratio: float) -> bool:
    """At least two classes present and the largest under `cat_max_ratio` of them (`counts`: per non-ignored class,
    zeros allowed): one device synchronisation."""
    if counts.numel() < 2:
        return False
    counts = counts.to(torch.float64)
    present = (counts > 0).sum()
    return bool(((present > 1) & (counts.max() / counts.sum() < cat_max_ratio)).item())


class LabelCoder:
    """The label policy applied to raw label maps of any device. For uint8 maps it is a 256-entry lookup table, and
    the classes of a crop are counted with one `bincount` of its raw values (through a raw value -> class matrix)."""

    def __init__(self, policy: LabelPolicy):
        self.policy = policy
        self.table = policy.encode(torch.arange(256))  # (256,) int64: training id of each raw value
        classes = sorted({int(value) for value in self.table.tolist()} - {policy.ignore_index})
        self.raw_to_class = (self.table.view(-1, 1) == torch.tensor(classes, dtype=torch.int64)).to(torch.float64)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.table.to(device), self.raw_to_class.to(device))
        return self._on_device[device]

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw label values -> training ids (int64, same shape)."""
        if raw.dtype != torch.uint8:
            return self.policy.encode(raw)
        table = self._tables(raw.device)[0]
        return table.index_select(0, raw.reshape(-1).to(torch.int32)).view(raw.shape)

    def class_counts(self, raw: torch.Tensor) -> torch.Tensor:
        """Pixels of each non-ignored class in a raw crop (a 1-D tensor; zeros for absent classes)."""
        if raw.dtype != torch.uint8:
            values, counts = torch.unique(self.policy.encode(raw), return_counts=True)
            return counts[values != self.policy.ignore_index]
        raw_counts = torch.bincount(raw.reshape(-1), minlength=256).to(torch.float64)
        return raw_counts @ self._tables(raw.device)[1]


@dataclass(frozen=True)
class AugmentationPlan:
    """The draws of one example's augmentation, made by [`TrainTransform.plan_example`] on the CPU: what the image's
    share of the work ([`TrainTransform.apply_plan`]) needs, on whichever device it runs.

    - `size`: (height, width) of the random keep-ratio resize;
    - `box`: (top, bottom, left, right) of the crop, in the resized image;
    - `flip`: a horizontal flip;
    - `colour`: the photometric distortion as steps `(channel, table)`, each 256-entry uint8 table applied to every
      value (`channel=None`) or to one HSV channel (0: hue, 1: saturation) in OpenCV's 8-bit HSV.
    """

    size: tuple[int, int]
    box: tuple[int, int, int, int]
    flip: bool
    colour: tuple[tuple[int | None, np.ndarray], ...]


class ColourSteps:
    """An image backend for `photometric_with_ops` that records its steps (with their tables) instead of applying them."""

    def __init__(self):
        self.steps: list[tuple[int | None, np.ndarray]] = []

    def lookup(self, image, table: torch.Tensor | None):
        if table is not None:
            self.steps.append((None, table.numpy().copy()))
        return image

    def adjust_hsv(self, image, channel: int, table: torch.Tensor):
        self.steps.append((channel, table.numpy().copy()))
        return image


__all__ = [
    "AugmentationPlan",
    "ColourSteps",
    "LabelCoder",
    "crop_box_draws",
    "has_varied_classes",
    "keep_ratio_size",
    "mix_seed",
    "photometric_distortion",
    "photometric_with_ops",
    "randint_draw",
    "random_crop_box",
    "uniform_draw",
]
