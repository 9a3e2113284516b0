"""OpenCV's 8-bit image kernels in torch, bit for bit, on any device: the bilinear uint8 resize (`cv2.resize`
`INTER_LINEAR`, mmseg's `mmcv.imresize`), the nearest-neighbour resize of label maps (`INTER_NEAREST`) and the 8-bit
RGB <-> HSV conversions (`cv2.cvtColor`, mmseg's `PhotoMetricDistortion`).

Hub code (imports only torch, numpy and the standard library): the image processor resizes with these kernels at
test time, and the training augmentation of `fpn_seg.data` runs them in DataLoader workers and on the training device.
Both resizes can compute a window of their output only (`box`): a bilinear output pixel depends only on its own two
source rows and columns, so a window of the output is exactly the same window of the whole resize, at the cost of
the window.

Conventions: images are uint8 `(..., C, H, W)` tensors of any strides (a channels-last view of an `(H, W, C)` buffer
too); label maps `(..., H, W)` of any dtype; sizes `(height, width)`; a box `(top, bottom, left, right)` is a
half-open window of the output.
"""

from collections.abc import Sequence

import numpy as np
import torch

# 11-bit fixed-point weights of cv2's uint8 bilinear resize (`INTER_RESIZE_COEF_BITS`).
_LINEAR_WEIGHT_ONE = 2048
_HSV_SHIFT = 12
HUE_RANGE = 180
# OpenCV's 8-bit RGB -> HSV fixed-point tables (index 0 unused: 0 there).
_S_DIV = torch.tensor([0] + [round((255 << _HSV_SHIFT) / v) for v in range(1, 256)], dtype=torch.int32)
_H_DIV = torch.tensor([0] + [round((HUE_RANGE << _HSV_SHIFT) / (6.0 * v)) for v in range(1, 256)], dtype=torch.int32)
# float32 constants of cv2's HSV -> RGB vector path: 6 / 180, 1 / 255, 255.
_HUE_SCALE, _INV_255, _255 = (float(np.float32(value)) for value in (6.0 / HUE_RANGE, 1.0 / 255.0, 255.0))


# ------------------------------------------------------------------------------------------------ resize


def linear_taps(in_size: int, out_size: int, snap_to_edge: bool) -> tuple[torch.Tensor, ...]:
    """cv2's bilinear taps along one axis of a uint8 resize: per output index, the two source indices and their
    11-bit fixed-point weights `(source0, source1, weight0, weight1)` (int64, int64, int32, int32), weights summing
    to 2048.

    The source position is `(i + 0.5) * (1 / (out / in)) - 0.5` (double, then float32), split into floor and fraction.
    Along the width cv2 snaps positions beyond the first or last pixel to that pixel with weight 2048 (`snap_to_edge`);
    along the height it keeps the fraction and clips the two source rows into the image.
    """
    scale = 1.0 / (out_size / in_size)
    position = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).to(torch.float32)
    source = torch.floor(position)
    fraction = position - source
    source = source.to(torch.int64)
    if snap_to_edge:  # all the weight on the edge pixel, which the clamp below picks
        outside = (source < 0) | (source >= in_size - 1)
        fraction = torch.where(outside, torch.zeros_like(fraction), fraction)
    weight0 = torch.round((1.0 - fraction) * _LINEAR_WEIGHT_ONE).to(torch.int32)  # half to even, as saturate_cast
    weight1 = torch.round(fraction * _LINEAR_WEIGHT_ONE).to(torch.int32)
    return source.clamp(0, in_size - 1), (source + 1).clamp(0, in_size - 1), weight0, weight1


def nearest_sources(in_size: int, out_size: int) -> torch.Tensor:
    """cv2's `INTER_NEAREST` source index of each output index along one axis: `floor(i * (1 / (out / in)))` in
    double precision, clipped to the image (int64)."""
    scale = 1.0 / (out_size / in_size)
    return torch.floor(torch.arange(out_size, dtype=torch.float64) * scale).to(torch.int64).clamp_(max=in_size - 1)


def _take(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor.index_select(dim, index)`; on the CPU through numpy's `take`, 3-5x faster for gathers along the last
    dimension on one thread (the same values: a gather)."""
    if tensor.device.type == "cpu" and not tensor.requires_grad:
        return torch.from_numpy(np.take(tensor.numpy(), index.numpy(), axis=dim))
    return tensor.index_select(dim, index)


def _check_box(size: Sequence[int], box: Sequence[int] | None) -> tuple[int, int, int, int]:
    height, width = int(size[0]), int(size[1])
    if box is None:
        return 0, height, 0, width
    top, bottom, left, right = (int(side) for side in box)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"box {tuple(box)} (top, bottom, left, right) is not a non-empty window of size {tuple(size)}."
        )
    return top, bottom, left, right


def resize_linear_uint8(
    images: torch.Tensor, size: Sequence[int], box: Sequence[int] | None = None
) -> torch.Tensor:
    """Bilinear resize (**no antialiasing**) of uint8 images `(..., C, H, W)` to `size` = (height, width), bit for
    bit as cv2's `INTER_LINEAR` on uint8; returns uint8 `(..., C, h, w)`, or only the window `box` of it.

    cv2's fixed-point kernel (taps: [`linear_taps`]): 11-bit weights, a horizontal pass in int32, then its vectorised
    vertical pass `(((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2` (never above 255). Checked equal
    to opencv 4.8.1, 4.14 and 5.1 on up- and downscales of many sizes (float bilinear + rounding is off by one grey
    level on ~12% of the values). Runs on the images' device; the work is that of the output window.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"resize_linear_uint8 expects uint8 images; got {images.dtype}.")
    in_height, in_width = images.shape[-2:]
    top, bottom, left, right = _check_box(size, box)
    if (in_height, in_width) == (int(size[0]), int(size[1])):
        return images[..., top:bottom, left:right]
    rows = [tap[top:bottom] for tap in linear_taps(in_height, int(size[0]), snap_to_edge=False)]
    cols = [tap[left:right] for tap in linear_taps(in_width, int(size[1]), snap_to_edge=True)]
    first_row, last_row, first_col, last_col = int(rows[0][0]), int(rows[1][-1]), int(cols[0][0]), int(cols[1][-1])
    # One copy of the taps to the device: source rows / cols relative to the window, then the weights.
    taps = torch.cat([rows[0] - first_row, rows[1] - first_row, cols[0] - first_col, cols[1] - first_col,
                      *(weight.to(torch.int64) for weight in (rows[2], rows[3], cols[2], cols[3]))])  # fmt: skip
    row0, row1, col0, col1, beta0, beta1, weight0, weight1 = taps.to(images.device).split(
        [bottom - top] * 2 + [right - left] * 2 + [bottom - top] * 2 + [right - left] * 2
    )
    # Channels last: the horizontal pass gathers whole pixels of a (..., Hr, Wr * C) uint8 buffer.
    channels = images.shape[-3]
    window = images[..., first_row : last_row + 1, first_col : last_col + 1].movedim(-3, -1)  # (..., Hr, Wr, C)
    window = window.reshape(*window.shape[:-2], -1)  # (..., Hr, Wr * C); a copy only for channels-first input
    offsets = torch.arange(channels, device=images.device)
    col0 = (col0.view(-1, 1) * channels + offsets).flatten()
    col1 = (col1.view(-1, 1) * channels + offsets).flatten()
    weight0 = weight0.to(torch.int32).repeat_interleave(channels)
    weight1 = weight1.to(torch.int32).repeat_interleave(channels)
    horizontal = _take(window, col0, -1).to(torch.int32).mul_(weight0)  # (..., Hr, w * C), scaled by 2^11
    horizontal.add_(_take(window, col1, -1).to(torch.int32).mul_(weight1)).bitwise_right_shift_(4)
    beta0, beta1 = beta0.to(torch.int32).view(-1, 1), beta1.to(torch.int32).view(-1, 1)
    upper = horizontal.index_select(-2, row0).mul_(beta0).bitwise_right_shift_(16)  # (..., h, w * C)
    lower = horizontal.index_select(-2, row1).mul_(beta1).bitwise_right_shift_(16)
    resized = upper.add_(lower).add_(2).bitwise_right_shift_(2).to(torch.uint8)
    resized = resized.view(*resized.shape[:-1], right - left, channels).movedim(-1, -3)  # (..., C, h, w)
    channels_first = images.stride(-3) > images.stride(-1)
    return resized.contiguous() if channels_first else resized


def resize_nearest(labels: torch.Tensor, size: Sequence[int], box: Sequence[int] | None = None) -> torch.Tensor:
    """Nearest-neighbour resize of label maps `(..., H, W)` (any dtype) to `size` = (height, width), or only the
    window `box` of it, with cv2's `INTER_NEAREST` source indices ([`nearest_sources`]): no new values appear."""
    in_height, in_width = labels.shape[-2:]
    top, bottom, left, right = _check_box(size, box)
    if (in_height, in_width) == (int(size[0]), int(size[1])):
        return labels[..., top:bottom, left:right]
    rows = nearest_sources(in_height, int(size[0]))[top:bottom]
    cols = nearest_sources(in_width, int(size[1]))[left:right]
    sources = torch.cat([rows, cols]).to(labels.device).split([bottom - top, right - left])
    return _take(_take(labels, sources[0], -2), sources[1], -1)


# ------------------------------------------------------------------------------------------------ colour


def rgb_to_hsv_uint8(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> (3, H, W) uint8 HSV in OpenCV's 8-bit convention (H 0..179, S and V 0..255): cv2's
    integer fixed-point arithmetic and tables, hence the same bytes as `cv2.cvtColor(..., COLOR_RGB2HSV)` on every
    CPU (checked on all 2^24 colours)."""
    rgb = image.to(torch.int32)
    red, green, blue = rgb[0], rgb[1], rgb[2]
    value = rgb.amax(dim=0)
    diff = value - rgb.amin(dim=0)
    tables = torch.cat([_S_DIV, _H_DIV]).to(image.device)
    half = 1 << (_HSV_SHIFT - 1)
    saturation = tables.index_select(0, value.flatten()).view_as(value).mul_(diff).add_(half)
    saturation = saturation.bitwise_right_shift_(_HSV_SHIFT)
    hue = torch.where(
        value == red, green - blue, torch.where(value == green, blue - red + 2 * diff, red - green + 4 * diff)
    )
    hue = hue.mul_(tables.index_select(0, diff.flatten() + 256).view_as(diff)).add_(half)
    hue = hue.bitwise_right_shift_(_HSV_SHIFT)  # arithmetic shift: floor for negatives, as in C
    hue = torch.where(hue < 0, hue + HUE_RANGE, hue)
    return torch.stack([hue, saturation, value]).to(torch.uint8)


def _to_float32(values: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 through int32 (the same values; torch's direct CPU conversion is ~6x slower)."""
    return values.to(torch.int32).to(torch.float32)


def hsv_to_rgb_uint8(hsv: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 HSV (OpenCV's 8-bit convention) -> (3, H, W) uint8 RGB, with the arithmetic of OpenCV 5's
    vectorised 8-bit path as compiled for CPUs with FMA (every x86-64 CPU with AVX2, aarch64): float32 maths,
    `1 - s * h` fused (one rounding), results truncated to uint8.

    The same as `cv2.cvtColor(..., COLOR_HSV2RGB)` of opencv-python-headless 5.1 on all 180 * 256 * 256 HSV values
    in its vector loop. Where OpenCV differs, it differs from itself: its scalar code, which handles the pixels left
    at the end of a row by the vector loop, rounds instead of truncating; OpenCV 4.x (and CPUs without FMA) round
    `1 - s * h` twice (1758 of the 11.8 M values then differ by one grey level). The fused product is computed in
    float64 (exact: a product of two float32 values) and rounded once to float32, so every device gives the same
    bytes.
    """
    hue = _to_float32(hsv[0]).mul_(_HUE_SCALE)
    sector = hue.trunc()
    fraction = hue.sub_(sector)  # in [0, 1)
    sector = sector.sub_(sector.mul(1.0 / 6.0).trunc_().mul_(6.0)).to(torch.uint8)  # cv2's sector, also for H >= 180
    saturation = _to_float32(hsv[1]).mul_(_INV_255)
    value = _to_float32(hsv[2]).mul_(_INV_255)

    def one_minus_fused(factor: torch.Tensor) -> torch.Tensor:  # float32(1 - s * factor), one rounding
        return saturation.to(torch.float64).mul_(factor.to(torch.float64)).neg_().add_(1.0).to(torch.float32)

    table = torch.stack(
        [
            value,
            value * (1.0 - saturation),
            value * one_minus_fused(fraction),
            value * one_minus_fused(1.0 - fraction),
        ]
    ).mul_(_255).to(torch.uint8)  # (4, H, W): v, p, q, t truncated to uint8
    # Which of (v, p, q, t) each of R, G, B takes, per hue sector (OpenCV's sector table).
    sources = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], dtype=torch.int64)
    index = sources.to(hsv.device).index_select(0, sector.flatten().to(torch.int64))  # (H * W, 3)
    return torch.gather(table.flatten(1), 0, index.t()).view(3, *hsv.shape[1:])


__all__ = [
    "HUE_RANGE",
    "hsv_to_rgb_uint8",
    "linear_taps",
    "nearest_sources",
    "resize_linear_uint8",
    "resize_nearest",
    "rgb_to_hsv_uint8",
]
