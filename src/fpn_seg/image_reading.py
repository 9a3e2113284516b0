"""Reading images and segmentation maps: image files opened with errors that name them ([`open_image`] and the
[`ImageFileError`] classes), and any image or label map a user has (paths, PIL images, numpy arrays, torch tensors)
converted to the tensors the processor and the data pipelines work on ([`image_to_tensor`]: uint8 RGB (3, H, W), as
mmseg reads images; [`label_to_tensor`]: int64 (H, W) class values), and the batch forms a call accepts split into
lists ([`as_list`], [`label_list`]).

Hub code: imports only torch, numpy, PIL and the standard library, so `save_pretrained` copies it next to a model
with the image processor that imports it.
"""

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


_EXIF_ORIENTATION = 0x0112
_COLOUR_LABEL_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
_INDEX_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
_CHANNEL_LAYOUTS = ("channels_first", "channels_last")


class ImageFileError(Exception):
    """An image file that cannot be read. `str(error)` names the file; `reason` says why in a few words without the
    name, for messages that list files (`name: reason`)."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class NotAnImageError(ImageFileError, UnidentifiedImageError):
    """Pillow recognises no image format in the file (empty, text, ...)."""


class CorruptImageError(ImageFileError, OSError):
    """The file is an image whose data is truncated or corrupt."""


class ImageTooLargeError(ImageFileError, ValueError):
    """More pixels than `limit` (the caller's `max_pixels`), or, with `limit` None, than Pillow's
    decompression-bomb limit. `size` is (width, height) when the header gave it."""

    def __init__(self, message: str, *, reason: str, size: tuple[int, int] | None = None, limit: int | None = None):
        super().__init__(message, reason=reason)
        self.size, self.limit = size, limit

    @property
    def amount(self) -> str:
        """The image's size for messages, e.g. `6000x5000 = 30.0 megapixels` (empty without a size)."""
        return "" if self.size is None else _size_text(self.size)


def _size_text(size: tuple[int, int]) -> str:
    pixels = size[0] * size[1]
    return f"{size[0]}x{size[1]} = " + (f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels")


def open_image(
    source: str | os.PathLike | bytes, name: str | None = None, *, decode: bool = True, max_pixels: int | None = None
) -> Image.Image:
    """Open an image file (a path, or its bytes) with errors that name it: the one opener of the package.

    With `decode=True` the pixels are read and the file is closed on return; with `decode=False` only the header is
    read (the size, the format) and the caller closes the image. `max_pixels` refuses larger images from the header,
    before decoding. `name` is the file's name in messages (default: the path). Raises `FileNotFoundError`,
    [`NotAnImageError`] (an `UnidentifiedImageError`), [`CorruptImageError`] (an `OSError`) or [`ImageTooLargeError`]
    (a `ValueError`: `max_pixels`, or Pillow's decompression-bomb limit of `2 * PIL.Image.MAX_IMAGE_PIXELS`; above
    `MAX_IMAGE_PIXELS` Pillow only warns).
    """
    name = str(source) if name is None and not isinstance(source, bytes) else (name or "image bytes")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"No image file at {name!r}.")
    image = None
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise _too_large(name, image.size, max_pixels)
        if decode:
            with image:
                image.load()
        return image
    except UnidentifiedImageError:
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        what = "empty file" if size == 0 else f"{size} bytes"
        reason = f"not an image file Pillow can read ({what})"
        raise NotAnImageError(f"{name!r} is {reason}.", reason=reason) from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"Image file {name!r} refused by Pillow's decompression-bomb limit: {error} The limit is "
            "2 * PIL.Image.MAX_IMAGE_PIXELS; raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) to read larger "
            "images you trust.",
            reason=f"refused by Pillow's decompression-bomb limit: {error}",
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated data, broken chunks or headers
        if image is not None:
            image.close()
        if isinstance(error, ImageFileError):
            raise
        raise CorruptImageError(
            f"Cannot read image file {name!r} (truncated or corrupt): {error}",
            reason=f"cannot read it (truncated or corrupt): {error}",
        ) from error


def _too_large(name: str, size: tuple[int, int], limit: int) -> ImageTooLargeError:
    reason = f"{_size_text(size)}, above the limit of {limit} pixels"
    return ImageTooLargeError(f"Image file {name!r} is {reason}.", reason=reason, size=size, limit=limit)


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (as image viewers do); images without one are returned as they are."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _sixteen_bit_to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit intensities -> 8-bit by dropping the low byte (`v >> 8`), as cv2 (mmseg's reader) converts them."""
    return (np.clip(array.astype(np.int64, copy=False), 0, 65535) >> 8).astype(np.uint8)


def _pil_to_uint8_hwc(image: Image.Image, convert_rgb: bool = True) -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) uint8 RGB array (16-bit grey: `v >> 8`; alpha dropped); with
    `convert_rgb=False`, (H, W, C) with the image's own bands (grey: 1, RGBA: 4)."""
    image = _exif_upright(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        grey = _sixteen_bit_to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3 if convert_rgb else 1, axis=2)
    if image.mode == "F":
        grey = _values_to_uint8(np.asarray(image), "PIL image of mode 'F'")
        return np.repeat(grey[:, :, None], 3 if convert_rgb else 1, axis=2)
    if not convert_rgb and image.mode in ("L", "RGB", "RGBA"):
        array = np.array(image)
        return array[:, :, None] if array.ndim == 2 else array
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


def _array_to_uint8_chw(
    array: np.ndarray, channels_first: bool, what: str, convert_rgb: bool = True, layout: str | None = None
) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) array -> (3, H, W) uint8 tensor: grey repeated, alpha dropped, C in {1, 3, 4};
    with `convert_rgb=False`, (C, H, W) with the channels as given (any C).

    `layout` ("channels_first" / "channels_last") says where the channels are; without it a 3-D array whose first
    and last sizes both could be channels is read channels-first when `channels_first`.
    """
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        channel_sizes = (1, 3, 4) if convert_rgb else range(1, 65)
        first, last = array.shape[0] in channel_sizes, array.shape[-1] in channel_sizes
        if layout == "channels_first" or (layout is None and first and (channels_first or not last)):
            array = array.transpose(1, 2, 0)
        elif layout is None and not last:
            raise ValueError(
                f"{what} of shape {array.shape}: expected (H, W), (H, W, C) or (C, H, W) with C in 1 (grey), 3 (RGB) "
                "or 4 (RGBA)."
            )
    else:
        raise ValueError(f"{what} of shape {array.shape}: expected one image of shape (H, W), (H, W, C) or (C, H, W).")
    if 0 in array.shape:
        raise ValueError(f"{what} of shape {array.shape} is empty; an image needs at least one pixel.")
    array = _values_to_uint8(np.asarray(array), what)  # (H, W, C)
    if convert_rgb:
        if array.shape[2] not in (1, 3, 4):
            raise ValueError(f"{what} has {array.shape[2]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA).")
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
    if not array.flags.writeable or min(array.strides) < 0:  # torch needs writable memory and positive strides
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def image_to_tensor(image: Any, convert_rgb: bool = True, input_data_format: str | None = None) -> torch.Tensor:
    """Any image a user has -> a (3, H, W) uint8 RGB tensor (possibly a channels-last view of an (H, W, 3) buffer).

    Accepted:
    - file paths (`str` / `os.PathLike`) and PIL images of any mode: the EXIF orientation is applied, palette and
      grey images are expanded to RGB, alpha is dropped, CMYK / YCbCr are converted by Pillow; 16-bit grey
      (`I;16*`, and `I`, read as 16-bit data as Pillow gives it for 16-bit PNGs) becomes `v >> 8`;
    - numpy arrays (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}, RGB order; uint8, uint16 (`v >> 8`), other
      integers in 0..255, floats in [0, 1] (scaled by 255) or 0..255;
    - torch tensors (C, H, W) or (H, W, C) (channels-first preferred when ambiguous), same dtypes. A (3, H, W) uint8
      tensor is returned as it is, on its device (a GPU tensor stays on the GPU); other tensors are read on the CPU.

    `convert_rgb=False` keeps the image's own channels ((C, H, W), e.g. 4 for RGBA or multispectral arrays);
    `input_data_format` ("channels_first" / "channels_last") says where the channels of an array are. Raises
    `TypeError` / `ValueError` naming what was received otherwise (an empty image included).
    """
    layout = channel_layout(input_data_format, "input_data_format")
    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(_pil_to_uint8_hwc(open_image(image), convert_rgb)).permute(2, 0, 1)
    if isinstance(image, Image.Image):
        return torch.from_numpy(_pil_to_uint8_hwc(image, convert_rgb)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        array = image.astype(image.dtype.newbyteorder("="), copy=False)
        return _array_to_uint8_chw(array, False, "numpy image", convert_rgb, layout)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3 and layout != "channels_last":
            if 0 in image.shape:
                raise ValueError(
                    f"torch image of shape {tuple(image.shape)} is empty; an image needs at least one pixel."
                )
            return image  # stays on its device: the processor resizes it there
        array = image.detach().cpu()
        array = (array.float() if array.dtype in (torch.bfloat16, torch.float16) else array).numpy()
        return _array_to_uint8_chw(array, True, "torch image", convert_rgb, layout)
    raise TypeError(
        f"Cannot read an image from a {type(image).__module__}.{type(image).__qualname__}; expected a PIL image, a "
        "file path, a numpy array or a torch tensor."
    )


def channel_layout(value: Any, name: str) -> str | None:
    """`input_data_format` / `data_format` (a string or transformers' `ChannelDimension`) -> "channels_first" /
    "channels_last" / None."""
    if value is None:
        return None
    value = getattr(value, "value", value)
    if value not in _CHANNEL_LAYOUTS:
        raise ValueError(f"{name} must be one of {_CHANNEL_LAYOUTS} (or None to infer it); got {value!r}.")
    return value


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
        label = open_image(label)
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


def as_list(items: Any, batched_ndim: int) -> list:
    """A single item, a list/tuple of items, or an array/tensor with `batched_ndim` dims (a batch) -> a list."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == batched_ndim:
        return list(items)
    return [items]


def label_list(segmentation_maps: Any, num_images: int) -> list:
    """The segmentation maps as a list, one per image. A 3-D array / tensor is a batch (N, H, W) when its first size
    is the number of images; otherwise one map (an (H, W, 3) colour mask is then refused by `label_to_tensor`)."""
    if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
        colour_like = segmentation_maps.shape[-1] in (3, 4) and segmentation_maps.shape[0] != 1
        if segmentation_maps.shape[0] == num_images and not (num_images == 1 and colour_like):
            return list(segmentation_maps)
        return [segmentation_maps]
    return as_list(segmentation_maps, batched_ndim=3)


__all__ = [
    "CorruptImageError",
    "ImageFileError",
    "ImageTooLargeError",
    "NotAnImageError",
    "as_list",
    "channel_layout",
    "image_to_tensor",
    "label_list",
    "label_to_tensor",
    "open_image",
]
