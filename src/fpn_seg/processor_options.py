"""The options of the Semantic FPN image processor, checked and put in their canonical form: the resize setting
(`size` dicts as transformers' processors take them, with mmseg's `scale=(long side, short side)` as an alias), the
output size it gives an image, `resample`, `pad_size`, and the transformers options that do not apply to mmseg's
test pipeline, refused with the reason.

Hub code: imports only numpy, PIL and the standard library.

Resize settings (`size`):
- `{"shortest_edge": s, "longest_edge": l}`: keep the aspect ratio, scaling by the largest factor that keeps the short
  side within `s` and the long side within `l`, `f = min(s / min(h, w), l / max(h, w))`, new size
  `(int(h * f + 0.5), int(w * f + 0.5))`: mmseg's keep-ratio rule for `scale=(l, s)`. `{"shortest_edge": s}` or
  `{"longest_edge": l}` alone bound one side only.
- `{"height": h, "width": w}`: a fixed size, aspect ratio not kept (mmseg's `keep_ratio=False`): the same OpenCV
  bilinear kernel, so exact as well.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

KEEP_RATIO_KEYS = ({"shortest_edge", "longest_edge"}, {"shortest_edge"}, {"longest_edge"})
FIXED_KEYS = {"height", "width"}
BILINEAR = Image.Resampling.BILINEAR  # transformers' `PILImageResampling.BILINEAR` (2)

_SIZE_FORMS = "{'shortest_edge': s, 'longest_edge': l} (keep-ratio; either key alone too) or {'height': h, 'width': w}"

# `ImagesKwargs` options that mmseg's test pipeline has no use for, and why; refused unless None.
NOT_APPLICABLE = {
    "default_to_square": f"size is always a dict, {_SIZE_FORMS}, never an int to interpret",
    "crop_size": "mmseg's test pipeline does not crop (use fpn_seg.segment(mode='slide') for sliding windows)",
    "do_center_crop": "mmseg's test pipeline does not crop (use fpn_seg.segment(mode='slide') for sliding windows)",
    "disable_grouping": "images are processed one by one",
    "image_seq_length": "not a vision-language processor",
}


def refuse_not_applicable(options: dict[str, Any], where: str) -> None:
    """Remove the `NOT_APPLICABLE` options from `options`; raise a `ValueError` with the reason for one given a value."""
    for name in [name for name in options if name in NOT_APPLICABLE]:
        if options.pop(name) is not None:
            raise ValueError(f"{where}: {name} does not apply to Semantic FPN: {NOT_APPLICABLE[name]}.")


def _positive_ints(values: dict, what: str, where: str) -> dict[str, int]:
    try:
        checked = {key: int(value) for key, value in values.items()}
    except (TypeError, ValueError):
        checked = {}
    if not checked or any(value <= 0 for value in checked.values()) or checked != values:
        raise ValueError(f"{where}: {what} needs positive whole numbers; got {values!r}.")
    return checked


def check_size(size: Any, where: str) -> dict[str, int]:
    """A `size` setting (a dict, or transformers' `SizeDict`) -> a plain dict of ints; `ValueError` naming the
    accepted forms otherwise."""
    if type(size).__name__ == "SizeDict":
        size = dict(size)
    if not isinstance(size, Mapping):
        raise ValueError(
            f"{where}: size must be a dict, {_SIZE_FORMS}; got {size!r} (scale=(long side, short side) is the "
            "tuple form of the keep-ratio setting)."
        )
    size = dict(size)
    if set(size) not in (*KEEP_RATIO_KEYS, FIXED_KEYS):
        raise ValueError(f"{where}: size {size!r} is not supported; give {_SIZE_FORMS}.")
    size = _positive_ints(size, "size", where)
    if size.get("shortest_edge", 0) > size.get("longest_edge", size.get("shortest_edge", 0)):
        raise ValueError(f"{where}: size {size!r} has shortest_edge > longest_edge.")
    return size


def size_from_scale(scale: Any, where: str) -> dict[str, int]:
    """mmseg's `scale=(long side, short side)` (either order, as mmseg reads it) -> the keep-ratio `size` dict."""
    try:
        sides = [int(side) for side in scale]
    except (TypeError, ValueError):
        sides = []
    if len(sides) != 2 or min(sides) <= 0:
        raise ValueError(f"{where}: scale must be two positive sizes (long side, short side); got {scale!r}.")
    return {"shortest_edge": min(sides), "longest_edge": max(sides)}


def resolve_size(size: Any, scale: Any, where: str) -> dict[str, int] | None:
    """The `size` setting from `size` and its alias `scale` (either may be None); both given must agree."""
    checked = None if size is None else check_size(size, where)
    if scale is None:
        return checked
    from_scale = size_from_scale(scale, where)
    if checked is not None and checked != from_scale:
        raise ValueError(
            f"{where}: size={checked} and scale={list(scale)} disagree; give one of them (scale=(l, s) is an alias of "
            "size={'shortest_edge': s, 'longest_edge': l})."
        )
    return from_scale


def scale_of(size: dict[str, int] | None) -> list[int] | None:
    """The `scale` alias of a `size` setting: `[longest_edge, shortest_edge]`; None for other settings."""
    if size is None or set(size) != KEEP_RATIO_KEYS[0]:
        return None
    return [size["longest_edge"], size["shortest_edge"]]


def scaled_size(size: dict[str, int], ratio: float) -> dict[str, int]:
    """A `size` setting times `ratio` (multi-scale testing: each side `int(side * ratio)`, as mmseg's
    `MultiScaleFlipAug` scales `(long, short)`)."""
    return size if ratio == 1.0 else {key: int(value * ratio) for key, value in size.items()}


def output_size(size: dict[str, int], height: int, width: int) -> tuple[int, int]:
    """The `(height, width)` an `height` x `width` image is resized to under the `size` setting (see the module
    docstring)."""
    if set(size) == FIXED_KEYS:
        return size["height"], size["width"]
    factors = []
    if "shortest_edge" in size:
        factors.append(size["shortest_edge"] / min(height, width))
    if "longest_edge" in size:
        factors.append(size["longest_edge"] / max(height, width))
    factor = min(factors)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def check_resample(resample: Any, where: str) -> Image.Resampling | None:
    """`resample` -> `BILINEAR` (or None, the same); the other filters are refused with the reason."""
    value = getattr(resample, "value", resample)  # PIL / transformers enums, torchvision's InterpolationMode
    if resample is None or value == BILINEAR or str(value).lower() == "bilinear":
        return None if resample is None else BILINEAR
    raise ValueError(
        f"{where}: resample={resample!r} is not supported: the resize is OpenCV's uint8 bilinear (INTER_LINEAR) bit for "
        "bit as mmseg's, the one kernel reproduced exactly; use resample=PILImageResampling.BILINEAR (2) or leave it out."
    )


def check_pad_size(pad_size: Any, where: str) -> dict[str, int] | None:
    """`pad_size` -> `{"height": int, "width": int}` or None."""
    if pad_size is None:
        return None
    if type(pad_size).__name__ == "SizeDict":
        pad_size = {key: value for key, value in dict(pad_size).items() if key in FIXED_KEYS}
    if not isinstance(pad_size, Mapping) or set(pad_size) != FIXED_KEYS:
        raise ValueError(f"{where}: pad_size must be a dict {{'height': h, 'width': w}}; got {pad_size!r}.")
    return _positive_ints(dict(pad_size), "pad_size", where)


def standardize_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """The processor's saved options (`do_resize`, `size`, `resample`, ...) checked and in their canonical types (JSON
    turns int keys into strings); an explicit None switches a step off, and the step then needs no setting."""
    options = dict(options)
    if options["size"] is not None:
        options["size"] = check_size(options["size"], where)
    elif options["do_resize"]:
        raise ValueError(f"{where}: do_resize needs a size (or scale).")
    options["resample"] = check_resample(options["resample"], where)
    options["pad_size"] = check_pad_size(options["pad_size"], where)
    if options["rescale_factor"] is not None:
        options["rescale_factor"] = float(options["rescale_factor"])
    elif options["do_rescale"]:
        raise ValueError(f"{where}: do_rescale needs a rescale_factor.")
    mean, std = options["image_mean"], options["image_std"]
    if mean is not None and std is not None:
        mean = options["image_mean"] = [float(value) for value in np.atleast_1d(mean)]
        std = options["image_std"] = [float(value) for value in np.atleast_1d(std)]
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(
                f"{where}: image_mean and image_std need one value per channel (3 for RGB) and std > 0; got {mean}, "
                f"{std}."
            )
    elif options["do_normalize"]:
        raise ValueError(f"{where}: do_normalize needs image_mean and image_std.")
    if options["label_map"] is not None:
        options["label_map"] = {int(raw): int(train) for raw, train in dict(options["label_map"]).items()}
    if options["ignore_index"] is not None:
        options["ignore_index"] = int(options["ignore_index"])
    return options


def batch_shape(sizes: list[tuple[int, int]], do_pad: bool, pad_size: dict[str, int] | None, where: str):
    """The (height, width) a batch of images resized to `sizes` is stacked at: the largest of them, or `pad_size`;
    with `do_pad` off, their one size (`ValueError` when they differ)."""
    largest = max(size[0] for size in sizes), max(size[1] for size in sizes)
    if not do_pad:
        if any(tuple(size) != largest for size in sizes):
            raise ValueError(
                f"{where}: the images resize to different sizes {sorted(set(map(tuple, sizes)))} and do_pad is off, so "
                "they cannot be stacked; pass do_pad=True (the default: padded, with a pixel_mask) or "
                "return_tensors=None (lists)."
            )
        return largest
    if pad_size is None:
        return largest
    target = pad_size["height"], pad_size["width"]
    if largest[0] > target[0] or largest[1] > target[1]:
        raise ValueError(f"{where}: an image resizes to {largest}, larger than pad_size {pad_size}.")
    return target


__all__ = [
    "BILINEAR",
    "FIXED_KEYS",
    "KEEP_RATIO_KEYS",
    "NOT_APPLICABLE",
    "batch_shape",
    "check_pad_size",
    "check_resample",
    "check_size",
    "output_size",
    "refuse_not_applicable",
    "resolve_size",
    "scale_of",
    "scaled_size",
    "size_from_scale",
    "standardize_options",
]
