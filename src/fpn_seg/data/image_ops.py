"""The image operations of the training augmentation, in two interchangeable backends that give the same bytes:

- [`TorchImageOps`]: the OpenCV-exact torch kernels of `fpn_seg.opencv_exact`, on `(3, H, W)` uint8 tensors of any
  device: the training device (augmentation on the GPU) and the CPU fallback;
- [`OpenCVImageOps`]: OpenCV itself (`opencv-python-headless`, the `[opencv]` extra) on `(H, W, 3)` uint8 arrays, for
  the DataLoader workers: its resize, LUT and colour conversions are SIMD C++, 2-20x faster than the torch kernels on
  one CPU core (see `benchmarks/bench_data.py`).

[`image_ops`] picks OpenCV when it is installed. OpenCV's uint8 resize, nearest resize, LUT and RGB -> HSV are integer
arithmetic: the torch kernels reproduce them on every CPU (the tests check it against cv2). Its HSV -> RGB is float
arithmetic whose rounding depends on how OpenCV was compiled for the CPU (fused multiply-add or not) and on where a row
ends (its scalar tail rounds): OpenCV's conversion is used only after [`opencv_hsv_matches`] has checked, once per
process, that it gives the torch kernel's bytes on all 11.8 M HSV values (rows laid out as the workers call it);
otherwise the torch kernel runs on the worker's arrays.
"""

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from ..opencv_exact import hsv_to_rgb_uint8, resize_linear_uint8, rgb_to_hsv_uint8
from ..optional_opencv import load_opencv

# sha256 of `hsv_to_rgb_uint8` on every HSV value (H 0..179, S, V 0..255 in that nesting), laid out as rows of
# `_HSV_ROW` pixels: what OpenCV must reproduce to be used (`tests/test_opencv_exact.py` recomputes it).
HSV_TO_RGB_SHA256 = "cf2763d893cfed37873c3062fb3b644ac3d2c35a59299550e0e82c8f6874eb48"
_HSV_ROW = 256  # pixels per row given to cv2's HSV -> RGB: a whole number of its vector blocks (16, 32 or 64 pixels)


def hsv_domain() -> np.ndarray:
    """Every 8-bit HSV value (H 0..179), as `(180 * 256 * 256 / 256, 256, 3)` uint8 rows."""
    grid = np.meshgrid(np.arange(180), np.arange(256), np.arange(256), indexing="ij")
    return np.stack(grid, -1).astype(np.uint8).reshape(-1, _HSV_ROW, 3)


@lru_cache(maxsize=1)
def opencv_hsv_matches() -> bool:
    """Whether the installed OpenCV converts HSV -> RGB exactly as [`hsv_to_rgb_uint8`] on this CPU (all values)."""
    cv2 = load_opencv()
    if cv2 is None:
        return False
    converted = cv2.cvtColor(hsv_domain(), cv2.COLOR_HSV2RGB)
    return hashlib.sha256(converted.tobytes()).hexdigest() == HSV_TO_RGB_SHA256


def convert_table(alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmseg's `PhotoMetricDistortion.convert` (`uint8(clip(float32(x) * alpha + beta, 0, 255))`, truncating) of
    every uint8 value, as a 256-entry uint8 lookup table: applying it is the same arithmetic, value by value."""
    values = torch.arange(256, dtype=torch.uint8)
    return (values.to(torch.float32) * alpha + beta).clamp_(0, 255).to(torch.uint8)


class TorchImageOps:
    """The augmentation's image operations on `(3, H, W)` uint8 tensors, on the tensors' device."""

    name = "torch"

    @staticmethod
    def from_tensor(image: torch.Tensor) -> torch.Tensor:
        return image

    @staticmethod
    def to_tensor(image: torch.Tensor) -> torch.Tensor:
        """The backend's image as a `(3, h, w)` uint8 tensor."""
        return image

    @staticmethod
    def size(image: torch.Tensor) -> tuple[int, int]:
        return int(image.shape[-2]), int(image.shape[-1])

    @staticmethod
    def resize(image: torch.Tensor, size: Sequence[int], box: Sequence[int]) -> torch.Tensor:
        """The window `box` (top, bottom, left, right) of the bilinear resize to `size`, computing that window only."""
        return resize_linear_uint8(image, size, box)

    @staticmethod
    def flip(image: torch.Tensor) -> torch.Tensor:
        return image.flip(-1)

    @staticmethod
    def lookup(image: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        """Every value `x` of `image` replaced by `table[x]` (a 256-entry uint8 table; `None`: unchanged)."""
        if table is None:
            return image
        indices = image.reshape(-1).to(torch.int32)
        return table.to(image.device).index_select(0, indices).view(image.shape)

    @classmethod
    def adjust_hsv(cls, image: torch.Tensor, channel: int, table: torch.Tensor) -> torch.Tensor:
        """RGB -> HSV (OpenCV's 8-bit convention), `table` applied to channel `channel` (0: H, 1: S), -> RGB."""
        hsv = rgb_to_hsv_uint8(image)
        hsv[channel] = cls.lookup(hsv[channel], table)
        return hsv_to_rgb_uint8(hsv)


class OpenCVImageOps:
    """The same operations with OpenCV on `(H, W, 3)` uint8 numpy arrays (DataLoader workers, one thread each)."""

    name = "opencv"

    @staticmethod
    def from_tensor(image: torch.Tensor) -> np.ndarray:
        """A `(3, H, W)` CPU tensor as an `(H, W, 3)` array (a view when its memory is channels-last)."""
        return np.ascontiguousarray(image.permute(1, 2, 0).numpy())

    @staticmethod
    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

    @staticmethod
    def size(image: np.ndarray) -> tuple[int, int]:
        return int(image.shape[0]), int(image.shape[1])

    @staticmethod
    def resize(image: np.ndarray, size: Sequence[int], box: Sequence[int]) -> np.ndarray:
        """The window `box` of `cv2.resize(INTER_LINEAR)` to `size` (OpenCV resizes the whole image: faster on one core
        than the torch kernel on the window alone, for every ratio mmseg draws)."""
        cv2 = load_opencv()
        top, bottom, left, right = box
        if (image.shape[0], image.shape[1]) != (size[0], size[1]):
            image = cv2.resize(image, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        return image.reshape(int(size[0]), int(size[1]), -1)[top:bottom, left:right]

    @staticmethod
    def flip(image: np.ndarray) -> np.ndarray:
        return load_opencv().flip(np.ascontiguousarray(image), 1)

    @staticmethod
    def lookup(image: np.ndarray, table: torch.Tensor | None) -> np.ndarray:
        if table is None:
            return image
        return load_opencv().LUT(np.ascontiguousarray(image), table.numpy())

    @staticmethod
    def adjust_hsv(image: np.ndarray, channel: int, table: torch.Tensor) -> np.ndarray:
        cv2 = load_opencv()
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
        identity = np.arange(256, dtype=np.uint8)
        tables = np.stack([table.numpy() if index == channel else identity for index in range(3)], -1)  # (256, 3)
        hsv = cv2.LUT(hsv, tables.reshape(256, 1, 3))
        if not opencv_hsv_matches():  # the torch kernel on the worker's array (same bytes, slower)
            rgb = hsv_to_rgb_uint8(torch.from_numpy(hsv).permute(2, 0, 1))
            return rgb.permute(1, 2, 0).contiguous().numpy()
        height, width = hsv.shape[:2]
        pixels = hsv.reshape(-1, 3)
        padding = (-len(pixels)) % _HSV_ROW
        if padding:
            pixels = np.concatenate([pixels, np.zeros((padding, 3), np.uint8)])
        rgb = cv2.cvtColor(pixels.reshape(-1, _HSV_ROW, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)
        return rgb[: height * width].reshape(height, width, 3)


def image_ops(prefer_opencv: bool = True) -> type[TorchImageOps] | type[OpenCVImageOps]:
    """The backend for CPU work: OpenCV when installed (and `prefer_opencv`), else the torch kernels."""
    return OpenCVImageOps if prefer_opencv and load_opencv() is not None else TorchImageOps


__all__ = [
    "HSV_TO_RGB_SHA256",
    "OpenCVImageOps",
    "TorchImageOps",
    "convert_table",
    "hsv_domain",
    "image_ops",
    "opencv_hsv_matches",
]
