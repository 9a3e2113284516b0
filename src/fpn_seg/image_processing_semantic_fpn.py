"""Image processor of Semantic FPN: mmsegmentation's test-time resize and normalisation, label encoding, and the
post-processing of logits into label maps at the original image size.

Hub code: imports only its sibling hub files (plus torch / numpy / PIL / transformers), so `save_pretrained` copies it
next to a model and a saved folder works with `trust_remote_code=True` without `fpn_seg` installed.

Conventions, chosen to reproduce mmseg's numbers:
- Images are converted to uint8 RGB first (see [`image_to_tensor`]), as mmseg reads them; resizing is bilinear
  **without antialiasing**, bit for bit as cv2's uint8 `INTER_LINEAR` (mmseg's `mmcv.imresize`), before normalising.
- Label maps are resized with nearest neighbour, with cv2's `INTER_NEAREST` source indices.
- A batch is stacked only when every image resizes to the same size; mmseg never pads at test time, so an image's
  output never depends on its batch neighbours (see [`SemanticFPNImageProcessor.preprocess`]).
"""

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .configuration_semantic_fpn import encode_labels, get_preset, save_folder_atomically


_EXIF_ORIENTATION = 0x0112
_COLOUR_LABEL_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
_INDEX_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
_PROCESSOR_FILE = "preprocessor_config.json"
# `save_pretrained` keyword arguments that go to `push_to_hub`.
_PUSH_TO_HUB_OPTIONS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr")


# ------------------------------------------------------------------------------------------------ input conversion


def _open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully read an image file (the file handle is closed on return).

    Errors name the file: `FileNotFoundError` (no file), `UnidentifiedImageError` (not an image: empty, text...),
    `OSError` (truncated or corrupt data), `ValueError` (more pixels than Pillow's decompression-bomb limit, which is
    `2 * PIL.Image.MAX_IMAGE_PIXELS`; above `MAX_IMAGE_PIXELS` Pillow only warns).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"No image file at {str(path)!r}.")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except UnidentifiedImageError:
        size = Path(path).stat().st_size
        raise UnidentifiedImageError(
            f"{str(path)!r} is not an image file Pillow can read ({'empty file' if size == 0 else f'{size} bytes'})."
        ) from None
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"Image file {str(path)!r} refused by Pillow's decompression-bomb limit: {error} The limit is "
            "2 * PIL.Image.MAX_IMAGE_PIXELS; raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) to read larger "
            "images you trust."
        ) from None
    except (OSError, SyntaxError) as error:  # truncated data, broken chunks or headers
        raise OSError(f"Cannot read image file {str(path)!r} (truncated or corrupt): {error}") from error


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (as image viewers do); images without one are returned as they are."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _sixteen_bit_to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit intensities -> 8-bit by dropping the low byte (`v >> 8`), as cv2 (mmseg's reader) converts them."""
    return (np.clip(array.astype(np.int64, copy=False), 0, 65535) >> 8).astype(np.uint8)


def _pil_to_uint8_hwc(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB array (16-bit grey: `v >> 8`; alpha dropped)."""
    image = _exif_upright(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        grey = _sixteen_bit_to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        return _values_to_uint8(np.asarray(image), "PIL image of mode 'F'")[:, :, None].repeat(3, axis=2)
    if image.mode != "RGB":
        try:
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # Pillow's route for palettes with transparency; alpha dropped below
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ValueError(f"Cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error
    return np.array(image)  # a writable copy


def _values_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Pixel values of any supported dtype -> uint8.

    uint8 as is; uint16 -> `v >> 8`; other integers must lie in 0..255; floats in [0, 1] (max <= 1) are scaled by 255,
    other floats are read as 0..255; floats are rounded and clipped.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return _sixteen_bit_to_uint8(array)
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not numeric:
        raise TypeError(f"{what}: unsupported dtype {array.dtype}; expected uint8, uint16, another integer or float.")
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"{what}: {array.dtype} values span {array.min()}..{array.max()}, outside 0..255; pass 16-bit data as "
                "uint16 (scaled to 8 bits) or scale it to 0..255 yourself."
            )
        return array.astype(np.uint8)
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: float pixel values contain NaN or infinity.")
    scale = 255.0 if array.max() <= 1.0 else 1.0
    return np.clip(np.rint(array.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _array_to_uint8_chw(array: np.ndarray, channels_first: bool, what: str) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) array with C in {1, 3, 4} -> (3, H, W) uint8 tensor (alpha dropped).

    A 3-D array whose first and last sizes both could be channels is read channels-first when `channels_first`.
    """
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            array = array.transpose(1, 2, 0)
        elif not last:
            raise ValueError(
                f"{what} of shape {array.shape}: expected (H, W), (H, W, C) or (C, H, W) with C in 1 (grey), 3 (RGB) "
                "or 4 (RGBA)."
            )
    else:
        raise ValueError(f"{what} of shape {array.shape}: expected one image of shape (H, W), (H, W, C) or (C, H, W).")
    array = _values_to_uint8(np.asarray(array), what)  # (H, W, C)
    array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
    if not array.flags.writeable or min(array.strides) < 0:  # torch needs writable memory and positive strides
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def label_policy_options(config) -> dict[str, Any]:
    """The processor options that carry a `SemanticFPNConfig`'s label policy (`do_reduce_labels`, `label_map`,
    `ignore_index`)."""
    return {
        "do_reduce_labels": config.reduce_labels,
        "label_map": config.label_map,
        "ignore_index": config.ignore_index,
    }


def image_to_tensor(image: Any) -> torch.Tensor:
    """Any image a user has -> a (3, H, W) uint8 RGB tensor (possibly a channels-last view of an (H, W, 3) buffer).

    Accepted:
    - file paths (`str` / `os.PathLike`) and PIL images of any mode: the EXIF orientation is applied, palette and
      grey images are expanded to RGB, alpha is dropped, CMYK / YCbCr are converted by Pillow; 16-bit grey
      (`I;16*`, and `I`, read as 16-bit data as Pillow gives it for 16-bit PNGs) becomes `v >> 8`;
    - numpy arrays (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}, RGB order; uint8, uint16 (`v >> 8`), other
      integers in 0..255, floats in [0, 1] (scaled by 255) or 0..255;
    - torch tensors (C, H, W) or (H, W, C) (channels-first preferred when ambiguous), same dtypes.

    Raises `TypeError` / `ValueError` naming what was received otherwise.
    """
    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(_pil_to_uint8_hwc(_open_image(image))).permute(2, 0, 1)
    if isinstance(image, Image.Image):
        return torch.from_numpy(_pil_to_uint8_hwc(image)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        return _array_to_uint8_chw(image.astype(image.dtype.newbyteorder("="), copy=False), False, "numpy image")
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
            return image.cpu()
        array = image.detach().cpu()
        array = (array.float() if array.dtype in (torch.bfloat16, torch.float16) else array).numpy()
        return _array_to_uint8_chw(array, True, "torch image")
    raise TypeError(
        f"Cannot read an image from a {type(image).__module__}.{type(image).__qualname__}; expected a PIL image, a "
        "file path, a numpy array or a torch tensor."
    )


def _label_array_to_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    """(H, W), (1, H, W) or (H, W, 1) integer-valued array -> (H, W) int64 tensor."""
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array[0] if array.shape[0] == 1 else array[:, :, 0]
    if array.ndim == 3 and (array.shape[-1] in (3, 4) or array.shape[0] in (3, 4)):
        raise ValueError(
            f"{what} of shape {array.shape} looks like a colour-coded mask, expected class indices: a (H, W) map of "
            "class ids. Map each colour to its class id first."
        )
    if array.ndim != 2:
        raise ValueError(f"{what} of shape {array.shape}: expected a (H, W) map of class indices.")
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ValueError(f"{what}: float label values must be whole numbers (class indices).")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{what}: unsupported dtype {array.dtype}; expected integer class indices.")
    return torch.from_numpy(array.astype(np.int64))


def label_to_tensor(label: Any) -> torch.Tensor:
    """A segmentation map -> (H, W) int64 tensor of raw class values (before the label policy).

    Accepted: file paths and PIL images of modes L, P (the palette **indices**, not the colours), I;16*, I and 1;
    numpy arrays / torch tensors (H, W), (1, H, W) or (H, W, 1) of integer (or whole-number float) values. RGB / RGBA
    maps are refused: they are colour-coded masks, not class indices. No EXIF rotation is applied to label maps.
    """
    if isinstance(label, (str, os.PathLike)):
        label = _open_image(label)
    if isinstance(label, Image.Image):
        if label.mode in _COLOUR_LABEL_MODES:
            raise ValueError(
                f"Segmentation map of PIL mode {label.mode!r} is a colour-coded mask, expected class indices: save "
                "label maps as single-channel images (mode L, P or I;16) whose values are class ids."
            )
        if label.mode not in _INDEX_LABEL_MODES:
            raise ValueError(f"Segmentation map of PIL mode {label.mode!r}: expected one of {_INDEX_LABEL_MODES}.")
        return _label_array_to_tensor(np.asarray(label), f"segmentation map of mode {label.mode!r}")
    if isinstance(label, np.ndarray):
        return _label_array_to_tensor(label, "numpy segmentation map")
    if isinstance(label, torch.Tensor):
        return _label_array_to_tensor(label.detach().cpu().numpy(), "torch segmentation map")
    raise TypeError(
        f"Cannot read a segmentation map from a {type(label).__module__}.{type(label).__qualname__}; expected a PIL "
        "image, a file path, a numpy array or a torch tensor."
    )


def _as_list(items: Any, batched_ndim: int) -> list:
    """A single item, a list/tuple of items, or an array/tensor with `batched_ndim` dims (a batch) -> a list."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == batched_ndim:
        return list(items)
    return [items]


# ------------------------------------------------------------------------------------------------ the processor


def _cv2_linear_taps(in_size: int, out_size: int, snap_to_edge: bool) -> tuple[torch.Tensor, ...]:
    """cv2's bilinear taps along one axis of a uint8 resize: per output index, the two source indices and their
    11-bit fixed-point weights `(source0, source1, weight0, weight1)`, weights summing to 2048.

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
    weight0 = torch.round((1.0 - fraction) * 2048).to(torch.int32)  # round half to even, as cv2's saturate_cast
    weight1 = torch.round(fraction * 2048).to(torch.int32)
    return source.clamp(0, in_size - 1), (source + 1).clamp(0, in_size - 1), weight0, weight1


def _cv2_nearest_sources(in_size: int, out_size: int) -> torch.Tensor:
    """cv2's `INTER_NEAREST` source index of each output index along one axis."""
    scale = 1.0 / (out_size / in_size)
    return torch.floor(torch.arange(out_size, dtype=torch.float64) * scale).to(torch.int64).clamp_(max=in_size - 1)


class SemanticFPNImageProcessorKwargs(TypedDict, total=False):
    """Options of [`SemanticFPNImageProcessor`] (its constructor arguments; also overrides of `preprocess`)."""

    do_resize: bool
    scale: tuple[int, int]
    do_normalize: bool
    image_mean: list[float]
    image_std: list[float]
    do_reduce_labels: bool
    label_map: dict[int, int] | None
    ignore_index: int


class SemanticFPNImageProcessor(BaseImageProcessor):
    r"""
    Image processor of Semantic FPN, reproducing mmsegmentation's test pipeline: keep-ratio resize into `scale`
    (bilinear without antialiasing, rounded to uint8), normalisation with mmseg's mean/std on 0..255 RGB, and the
    label policy (`do_reduce_labels`, `label_map`, `ignore_index`) applied by one function, [`encode_labels`].

    Batching: images are processed one by one and stacked into `pixel_values` of shape (B, 3, H, W) when they all
    resize to the same size. With `return_tensors="pt"` (or `"np"`) a batch of differently sized images raises a
    `ValueError`; `return_tensors=None` returns lists with one (3, H_i, W_i) tensor per image instead. Nothing is
    padded, so an image's pixel values (and the model's output) do not depend on the rest of its batch.
    `fpn_seg.inference.segment` batches images of equal size together.

    Args:
        do_resize (`bool`, defaults to `True`):
            Resize keeping the aspect ratio into `scale`.
        scale (`tuple[int, int]`, defaults to `(2048, 1024)`):
            mmseg's test scale `(long side, short side)`: factor `f = min(long / max(h, w), short / min(h, w))`, new
            size `int(h * f + 0.5), int(w * f + 0.5)`. Cityscapes: (2048, 1024); ADE20K: (2048, 512).
        do_normalize (`bool`, defaults to `True`):
            `(pixel - image_mean) / image_std` per channel, on 0..255 values.
        image_mean (`list[float]`, defaults to `[123.675, 116.28, 103.53]`):
            Per-channel RGB mean on 0..255.
        image_std (`list[float]`, defaults to `[58.395, 57.12, 57.375]`):
            Per-channel RGB standard deviation on 0..255.
        do_reduce_labels (`bool`, defaults to `False`):
            ADE20K-style annotations: 0 -> `ignore_index`, `v` -> `v - 1`.
        label_map (`dict[int, int]`, *optional*):
            Raw annotation value -> training id (values it does not name become `ignore_index`), applied first.
        ignore_index (`int`, defaults to 255):
            Label value the loss and the metric skip.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = SemanticFPNImageProcessorKwargs

    do_resize: bool = True
    scale: tuple[int, int] = (2048, 1024)
    do_normalize: bool = True
    image_mean: list[float] = [123.675, 116.28, 103.53]
    image_std: list[float] = [58.395, 57.12, 57.375]
    do_reduce_labels: bool = False
    label_map: dict[int, int] | None = None
    ignore_index: int = 255

    def __init__(
        self,
        do_resize: bool | None = None,
        scale: Sequence[int] | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_reduce_labels: bool | None = None,
        label_map: dict[int, int] | None = None,
        ignore_index: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        given = dict(
            do_resize=do_resize,
            scale=scale,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_reduce_labels=do_reduce_labels,
            label_map=label_map,
            ignore_index=ignore_index,
        )
        for name, value in given.items():
            setattr(self, name, copy.deepcopy(getattr(type(self), name)) if value is None else value)
        self._standardize_options()

    def _standardize_options(self) -> None:
        """Give every option its canonical type (JSON turns tuples into lists, int keys into strings); check it."""
        name = type(self).__name__
        if len(self.scale) != 2 or min(int(side) for side in self.scale) <= 0:
            raise ValueError(f"{name}: scale must be two positive sizes (long side, short side); got {self.scale!r}.")
        self.scale = (int(self.scale[0]), int(self.scale[1]))
        self.image_mean = [float(value) for value in self.image_mean]
        self.image_std = [float(value) for value in self.image_std]
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"{name}: image_mean and image_std need 3 values (RGB), std > 0; got {self.image_mean}, "
                f"{self.image_std}."
            )
        if self.label_map is not None:
            self.label_map = {int(raw): int(train) for raw, train in dict(self.label_map).items()}
        self.ignore_index = int(self.ignore_index)
        self.do_resize, self.do_normalize = bool(self.do_resize), bool(self.do_normalize)
        self.do_reduce_labels = bool(self.do_reduce_labels)

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "SemanticFPNImageProcessor":
        """A processor carrying the label policy (`reduce_labels`, `label_map`, `ignore_index`) of a
        `SemanticFPNConfig`; `kwargs` set the other options (e.g. `scale`)."""
        return cls(**{**label_policy_options(config), **kwargs})

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "SemanticFPNImageProcessor":
        """The test scale and label policy of one of mmseg's sem_fpn configs (see `PRESETS`), e.g.
        `"fpn_r50_512x512_160k_ade20k"` -> scale (2048, 512), `do_reduce_labels=True`."""
        preset = get_preset(name)
        return cls(**{"scale": preset.test_scale, "do_reduce_labels": preset.reduce_labels, **kwargs})

    def _with_overrides(self, overrides: dict[str, Any]) -> "SemanticFPNImageProcessor":
        """A shallow copy of this processor with some options replaced (the `preprocess(**overrides)` mechanism);
        `None` values keep the processor's own setting, as in transformers' processors."""
        overrides = {name: value for name, value in overrides.items() if value is not None}
        unknown = sorted(set(overrides) - set(self.valid_kwargs.__annotations__))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.preprocess got unknown options {unknown}; "
                f"valid options: {sorted(self.valid_kwargs.__annotations__)}."
            )
        if not overrides:
            return self
        processor = copy.copy(self)
        processor.__dict__.update(overrides)
        processor._standardize_options()
        return processor

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """As `ImageProcessingMixin.save_pretrained`, but atomic (see `save_folder_atomically`): the files are written
        to a hidden sibling folder and moved in with `preprocessor_config.json` last; other files are kept. With
        `push_to_hub=True` the processor is then uploaded with `push_to_hub` (`repo_id`: the folder name by default).
        """
        hub_options = {name: kwargs.pop(name) for name in _PUSH_TO_HUB_OPTIONS if name in kwargs}
        save_folder = super().save_pretrained
        save_folder_atomically(lambda folder: save_folder(folder, **kwargs), save_directory, _PROCESSOR_FILE)
        if push_to_hub:
            self.push_to_hub(hub_options.pop("repo_id", Path(save_directory).absolute().name), **hub_options)
        return [str(Path(save_directory) / _PROCESSOR_FILE)]

    # ------------------------------------------------------------------------------------------ building blocks

    def test_size(self, height: int, width: int, ratio: float = 1.0) -> tuple[int, int]:
        """mmseg's keep-ratio test size of an `height` x `width` image, as `(new_height, new_width)`.

        The scale is `self.scale` (or the image's own size when `do_resize` is off) times `ratio` (multi-scale
        testing: `(int(long * ratio), int(short * ratio))`, as mmseg's `MultiScaleFlipAug`).
        """
        long_side, short_side = self.scale if self.do_resize else (max(height, width), min(height, width))
        if ratio != 1.0:
            long_side, short_side = int(long_side * ratio), int(short_side * ratio)
        factor = min(max(long_side, short_side) / max(height, width), min(long_side, short_side) / min(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def resize_image(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear resize (**no antialiasing**) of uint8 images (3, H, W) or (B, 3, H, W) to `size` = (height,
        width), bit for bit as cv2's `INTER_LINEAR` on uint8 (mmseg's `mmcv.imresize`); returns uint8.

        cv2's fixed-point kernel (see [`_cv2_linear_taps`]): 11-bit weights, a horizontal pass in int32, then its
        vectorised vertical pass `(((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2`. Checked equal to
        opencv 4.8.1 and 4.14 on up- and downscales of many sizes (float bilinear + rounding is off by one grey level
        on ~12% of the values)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"resize_image expects uint8 images (see image_to_tensor); got {images.dtype}.")
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        in_height, in_width = images.shape[-2:]
        device = images.device
        col0, col1, weight0, weight1 = (t.to(device) for t in _cv2_linear_taps(in_width, size[1], snap_to_edge=True))
        row0, row1, beta0, beta1 = (t.to(device) for t in _cv2_linear_taps(in_height, size[0], snap_to_edge=False))
        pixels = images.to(torch.int32)
        horizontal = pixels[..., col0].mul_(weight0)  # (..., H, w) int32, scaled by 2^11
        horizontal.add_(pixels[..., col1].mul_(weight1)).bitwise_right_shift_(4)
        top = horizontal.index_select(-2, row0).mul_(beta0.view(-1, 1)).bitwise_right_shift_(16)  # (..., h, w)
        bottom = horizontal.index_select(-2, row1).mul_(beta1.view(-1, 1)).bitwise_right_shift_(16)
        return top.add_(bottom).add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8)

    def resize_label(self, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Nearest-neighbour resize of label maps (H, W) or (B, H, W) to `size` = (height, width), any dtype: the
        source pixel of output index `i` is `floor(i * (1 / (out / in)))` in double precision, clipped to the image,
        as cv2's `INTER_NEAREST` computes it, so no new values appear."""
        in_height, in_width = labels.shape[-2:]
        if (in_height, in_width) == tuple(size):
            return labels
        rows, cols = _cv2_nearest_sources(in_height, size[0]), _cv2_nearest_sources(in_width, size[1])
        return labels.index_select(-2, rows.to(labels.device)).index_select(-1, cols.to(labels.device))

    def normalize_image(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (3, H, W) or (B, 3, H, W) -> float32 `(pixel - image_mean) / image_std` (or plain 0..255
        floats when `do_normalize` is off), the same arithmetic as mmseg's data preprocessor, hence the same bits.
        `out`: optional contiguous float32 tensor of the same shape to write into."""
        # Channels-first bytes first (a cheap 1-byte transpose of channels-last views): the float passes then run
        # over contiguous memory.
        images = images.contiguous()
        out = images.to(torch.float32) if out is None else out.copy_(images)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32, device=out.device).view(3, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32, device=out.device).view(3, 1, 1)
            out.sub_(mean).div_(std)
        return out

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Raw annotation values -> training ids under this processor's label policy (int64, same shape)."""
        return encode_labels(
            labels, ignore_index=self.ignore_index, reduce_labels=self.do_reduce_labels, label_map=self.label_map
        )

    # ------------------------------------------------------------------------------------------ preprocess

    def preprocess(
        self,
        images: Any,
        segmentation_maps: Any = None,
        return_tensors: str | None = "pt",
        **overrides: Any,
    ) -> BatchFeature:
        """Images (and optionally their segmentation maps) -> `BatchFeature` with `pixel_values` (and `labels`).

        Args:
            images: one image or a list of images in any form [`image_to_tensor`] reads; a 4-D array / tensor is a
                batch.
            segmentation_maps: one map per image, in any form [`label_to_tensor`] reads (a 3-D array / tensor is a
                batch), each the size of its image. Encoded with the label policy, resized (nearest) like the image.
            return_tensors: `"pt"`: `pixel_values` (B, 3, H, W) float32, `labels` (B, H, W) int64; `"np"`: the same as
                numpy arrays; `None`: lists of per-image tensors (images may then resize to different sizes).
            overrides: any constructor option, for this call only (e.g. `do_resize=False`).
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None; got {return_tensors!r}.")
        processor = self._with_overrides(overrides)
        image_tensors = [image_to_tensor(image) for image in _as_list(images, batched_ndim=4)]
        if not image_tensors:
            raise ValueError("preprocess got no images.")
        sizes = [processor.test_size(*image.shape[-2:]) for image in image_tensors]
        if return_tensors is not None and len(set(sizes)) > 1:
            raise ValueError(
                f"The images resize to different sizes {sorted(set(sizes))} and cannot be stacked: Semantic FPN does "
                "not pad at test time. Pass return_tensors=None for per-image tensors, call the processor per image, "
                "or use fpn_seg.inference.segment, which batches images of equal size."
            )
        data = {"pixel_values": processor._pixel_values(image_tensors, sizes, stacked=return_tensors is not None)}
        if segmentation_maps is not None:
            data["labels"] = processor._labels(segmentation_maps, image_tensors, sizes)
            if return_tensors is not None:
                data["labels"] = torch.stack(data["labels"])
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    def _pixel_values(self, images: list[torch.Tensor], sizes: list[tuple[int, int]], stacked: bool):
        """Resize + normalise each image; written straight into one (B, 3, H, W) tensor when `stacked`."""
        if not stacked:
            return [self.normalize_image(self.resize_image(image, size)) for image, size in zip(images, sizes)]
        batch = torch.empty((len(images), 3, *sizes[0]), dtype=torch.float32)
        for index, (image, size) in enumerate(zip(images, sizes)):
            self.normalize_image(self.resize_image(image, size), out=batch[index])
        return batch

    def _labels(self, segmentation_maps, images: list[torch.Tensor], sizes: list[tuple[int, int]]):
        """Read, check, encode and resize the segmentation maps: a list of (H_i, W_i) int64 tensors."""
        labels = [label_to_tensor(label) for label in _as_list(segmentation_maps, batched_ndim=3)]
        if len(labels) != len(images):
            raise ValueError(f"Got {len(labels)} segmentation maps for {len(images)} images; pass one per image.")
        for index, (label, image) in enumerate(zip(labels, images)):
            if label.shape != image.shape[-2:]:
                raise ValueError(
                    f"Segmentation map {index} has size {tuple(label.shape)} but its image has size "
                    f"{tuple(image.shape[-2:])}; each map must be the size of its image."
                )
        return [self.resize_label(self.encode_labels(label), size) for label, size in zip(labels, sizes)]

    # ------------------------------------------------------------------------------------------ post-processing

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Model outputs -> one (H, W) int64 label map per image.

        The logits (B, N, h, w) (at the input size, as the model returns them) are resized to each `target_sizes[i]`
        = (H, W) (the original image size) bilinearly with align_corners=False, then the argmax is taken, as mmseg
        does. Without `target_sizes` the argmax is taken at the logits' size.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(
                f"target_sizes has {len(target_sizes)} entries but the logits hold {len(logits)} images; pass one "
                "(height, width) per image."
            )
        label_maps = []
        for image_logits, target_size in zip(logits, target_sizes):
            target_size = tuple(int(side) for side in target_size)
            image_logits = image_logits[None].float()  # (1, N, h, w)
            if tuple(image_logits.shape[-2:]) != target_size:
                image_logits = F.interpolate(image_logits, size=target_size, mode="bilinear", align_corners=False)
            label_maps.append(image_logits[0].argmax(dim=0))  # (H, W)
        return label_maps


__all__ = [
    "SemanticFPNImageProcessor",
    "SemanticFPNImageProcessorKwargs",
    "image_to_tensor",
    "label_policy_options",
    "label_to_tensor",
]
