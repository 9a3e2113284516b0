"""Image processor of Semantic FPN: mmsegmentation's test-time resize and normalisation, label encoding, and the
post-processing of logits into label maps at the original image size.

Hub code: imports only its sibling hub files (plus torch / numpy / PIL / transformers), so `save_pretrained` copies it
next to a model and a saved folder works with `trust_remote_code=True` without `fpn_seg` installed.

Conventions, chosen to reproduce mmseg's numbers:
- Images are converted to uint8 RGB first (see [`image_to_tensor`]), as mmseg reads them; resizing is bilinear
  **without antialiasing**, bit for bit as cv2's uint8 `INTER_LINEAR` (mmseg's `mmcv.imresize`), before normalising.
- Label maps are resized with nearest neighbour, with cv2's `INTER_NEAREST` source indices.
- mmseg never pads at test time. A batch of images that resize to different sizes is stacked padded (bottom/right,
  zeros) with a `pixel_mask`; the model then runs each image on its own valid region in eval mode and the
  post-processing crops it back, so an image's result never depends on its batch neighbours.
"""

import copy
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs
from transformers.utils import IMAGE_PROCESSOR_NAME

from .atomic import save_folder_atomically, split_push_options
from .label_policy import LabelPolicy
from .opencv_exact import resize_linear_uint8, resize_nearest


_EXIF_ORIENTATION = 0x0112
_COLOUR_LABEL_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")
_INDEX_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")
_CHANNEL_LAYOUTS = ("channels_first", "channels_last")


# ------------------------------------------------------------------------------------------------ input conversion


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
    layout = _channel_layout(input_data_format, "input_data_format")
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


def _channel_layout(value: Any, name: str) -> str | None:
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


def _as_list(items: Any, batched_ndim: int) -> list:
    """A single item, a list/tuple of items, or an array/tensor with `batched_ndim` dims (a batch) -> a list."""
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, (np.ndarray, torch.Tensor)) and items.ndim == batched_ndim:
        return list(items)
    return [items]


def _label_list(segmentation_maps: Any, num_images: int) -> list:
    """The segmentation maps as a list, one per image. A 3-D array / tensor is a batch (N, H, W) when its first size
    is the number of images; otherwise one map (an (H, W, 3) colour mask is then refused by `label_to_tensor`)."""
    if isinstance(segmentation_maps, (np.ndarray, torch.Tensor)) and segmentation_maps.ndim == 3:
        colour_like = segmentation_maps.shape[-1] in (3, 4) and segmentation_maps.shape[0] != 1
        if segmentation_maps.shape[0] == num_images and not (num_images == 1 and colour_like):
            return list(segmentation_maps)
        return [segmentation_maps]
    return _as_list(segmentation_maps, batched_ndim=3)


# ------------------------------------------------------------------------------------------------ the processor


def _refuse_not_applicable(options: dict[str, Any], where: str) -> None:
    """Raise a `ValueError` naming the first option of `_NOT_APPLICABLE` given a value, and what to use instead."""
    for name in [name for name in options if name in _NOT_APPLICABLE]:
        if options.pop(name) is not None:
            raise ValueError(f"{where}: {name} does not apply to Semantic FPN: {_NOT_APPLICABLE[name]}.")


class SemanticFPNImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of [`SemanticFPNImageProcessor`]: transformers' `ImagesKwargs` plus mmseg's test `scale` and the label
    policy (constructor arguments; also per-call overrides of `preprocess`)."""

    scale: list[int] | tuple[int, int] | None
    do_reduce_labels: bool | None
    label_map: dict[int, int] | None
    ignore_index: int | None


# `ImagesKwargs` options that mmseg's test pipeline has no use for, and what to use instead; refused unless None.
_NOT_APPLICABLE = {
    "size": "the keep-ratio resize is set by scale=(long side, short side)",
    "default_to_square": "the keep-ratio resize is set by scale",
    "crop_size": "mmseg's test pipeline does not crop (use fpn_seg.segment(mode='slide') for sliding windows)",
    "do_center_crop": "mmseg's test pipeline does not crop",
    "do_pad": "images of different sizes are padded in a batch automatically, with a pixel_mask",
    "pad_size": "images of different sizes are padded in a batch automatically, with a pixel_mask",
    "resample": "the resize is fixed: OpenCV's uint8 bilinear, bit for bit as mmseg's",
    "do_rescale": "image_mean and image_std are on 0..255 values, as mmseg's",
    "rescale_factor": "image_mean and image_std are on 0..255 values, as mmseg's",
    "disable_grouping": "images are processed one by one",
    "image_seq_length": "not a vision-language processor",
}


class SemanticFPNImageProcessor(BaseImageProcessor):
    r"""
    Image processor of Semantic FPN, reproducing mmsegmentation's test pipeline: keep-ratio resize into `scale`
    (bilinear without antialiasing, rounded to uint8), normalisation with mmseg's mean/std on 0..255 RGB, and the
    label policy (`do_reduce_labels`, `label_map`, `ignore_index`; as one object, [`label_policy`]) applied by
    [`encode_labels`].

    Batching: images are processed one by one. With `return_tensors="pt"` (or `"np"`) they are stacked into
    `pixel_values` (B, C, H, W); when they resize to different sizes, each is padded at the bottom and right (zeros)
    to the largest height and width and a `pixel_mask` (B, H, W), 1 on each image's own pixels, is added. The model
    then runs each image on its own region in eval mode and `post_process_semantic_segmentation` crops the logits to
    it, so every image gets the label map it gets alone. `return_tensors=None` returns lists of per-image tensors.

    Args:
        do_resize (`bool`, defaults to `True`):
            Resize keeping the aspect ratio into `scale`.
        scale (`list[int]`, defaults to `[2048, 1024]`):
            mmseg's test scale `(long side, short side)`: factor `f = min(long / max(h, w), short / min(h, w))`, new
            size `int(h * f + 0.5), int(w * f + 0.5)`. Cityscapes: [2048, 1024]; ADE20K: [2048, 512].
        do_normalize (`bool`, defaults to `True`):
            `(pixel - image_mean) / image_std` per channel, on 0..255 values.
        image_mean (`list[float]`, defaults to `[123.675, 116.28, 103.53]`):
            Per-channel mean on 0..255 (one value per channel: 3 for RGB).
        image_std (`list[float]`, defaults to `[58.395, 57.12, 57.375]`):
            Per-channel standard deviation on 0..255.
        do_convert_rgb (`bool`, defaults to `True`):
            Convert every image to RGB (grey repeated, alpha dropped), as mmseg reads images. `False` keeps the
            channels an image has (e.g. 4 for a 4-channel model), with one `image_mean` / `image_std` per channel.
        do_reduce_labels (`bool`, defaults to `False`):
            ADE20K-style annotations: 0 -> `ignore_index`, `v` -> `v - 1`.
        label_map (`dict[int, int]`, *optional*):
            Raw annotation value -> training id (values it does not name become `ignore_index`), applied first.
        ignore_index (`int`, defaults to 255):
            Label value the loss and the metric skip; padding of label maps.

    Per call, `preprocess` also takes transformers' `input_data_format` (where the channels of array inputs are),
    `data_format` (only "channels_first": the model's layout) and `device`. The other `ImagesKwargs` options (`size`,
    `crop_size`, `resample`, `do_rescale`, ...) do not apply to mmseg's pipeline and are refused with the reason.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = SemanticFPNImageProcessorKwargs

    do_resize: bool = True
    scale: list[int] = [2048, 1024]
    do_normalize: bool = True
    image_mean: list[float] = [123.675, 116.28, 103.53]
    image_std: list[float] = [58.395, 57.12, 57.375]
    do_convert_rgb: bool = True
    do_reduce_labels: bool = False
    label_map: dict[int, int] | None = None
    ignore_index: int = 255
    # Per-call options (not saved): where the channels of array inputs are, the output layout and device.
    input_data_format = None
    data_format = None
    device = None
    _options = ("do_resize", "scale", "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_reduce_labels",
                "label_map", "ignore_index")  # fmt: skip
    _call_options = ("input_data_format", "data_format", "device", "return_tensors")

    def __init__(self, **kwargs):
        options = {name: kwargs.pop(name) for name in self._options if name in kwargs}
        _refuse_not_applicable(kwargs, type(self).__name__)
        for name in self._call_options:
            if kwargs.pop(name, None) is not None:
                raise TypeError(
                    f"{type(self).__name__}: {name} is an option of a call (preprocess), not of the processor."
                )
        super().__init__(**kwargs)
        for name in self._options:  # an explicit None is kept (it switches the step off); unset ones get the default
            setattr(self, name, options[name] if name in options else copy.deepcopy(getattr(type(self), name)))
        self._standardize_options()

    def _standardize_options(self) -> None:
        """Give every option its canonical type (JSON turns int keys into strings); check it."""
        name = type(self).__name__
        if self.scale is not None:
            if len(self.scale) != 2 or min(int(side) for side in self.scale) <= 0:
                raise ValueError(
                    f"{name}: scale must be two positive sizes (long side, short side); got {self.scale!r}."
                )
            self.scale = [int(self.scale[0]), int(self.scale[1])]
        elif self.do_resize:
            raise ValueError(f"{name}: do_resize needs a scale (long side, short side).")
        if self.image_mean is not None and self.image_std is not None:
            self.image_mean = [float(value) for value in np.atleast_1d(self.image_mean)]
            self.image_std = [float(value) for value in np.atleast_1d(self.image_std)]
            if len(self.image_mean) != len(self.image_std) or min(self.image_std) <= 0:
                raise ValueError(
                    f"{name}: image_mean and image_std need one value per channel (3 for RGB) and std > 0; got "
                    f"{self.image_mean}, {self.image_std}."
                )
        elif self.do_normalize:
            raise ValueError(f"{name}: do_normalize needs image_mean and image_std.")
        if self.label_map is not None:
            self.label_map = {int(raw): int(train) for raw, train in dict(self.label_map).items()}
        if self.ignore_index is not None:
            self.ignore_index = int(self.ignore_index)

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "SemanticFPNImageProcessor":
        """A processor carrying the label policy (`reduce_labels`, `label_map`, `ignore_index`) of a
        `SemanticFPNConfig`; `kwargs` set the other options (e.g. `scale`)."""
        return cls(**{**LabelPolicy.of(config).processor_options(), **kwargs})

    def _with_overrides(self, overrides: dict[str, Any]) -> "SemanticFPNImageProcessor":
        """A shallow copy of this processor with some options replaced (the `preprocess(**overrides)` mechanism);
        `None` values keep the processor's own setting, as in transformers' processors."""
        overrides = {name: value for name, value in overrides.items() if value is not None}
        _refuse_not_applicable(overrides, f"{type(self).__name__}.preprocess")
        valid = (*self._options, *self._call_options)
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.preprocess got unknown options {unknown}; valid options: {sorted(valid)}."
            )
        if not overrides:
            return self
        processor = copy.copy(self)
        processor.__dict__.update(overrides)
        processor._standardize_options()
        return processor

    def to_dict(self) -> dict[str, Any]:
        """The saved options (`preprocessor_config.json`), without the per-call ones."""
        return {key: value for key, value in super().to_dict().items() if key not in self._call_options}

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """As `ImageProcessingMixin.save_pretrained`, but atomic (see `save_folder_atomically`): the files are written
        to a hidden sibling folder and moved in with `preprocessor_config.json` last; other files are kept. With
        `push_to_hub=True` the processor is then uploaded with `push_to_hub` (`repo_id`: the folder name by default).
        """
        kwargs, hub_options = split_push_options(kwargs, save_directory)
        save_folder = super().save_pretrained
        save_folder_atomically(lambda folder: save_folder(folder, **kwargs), save_directory, IMAGE_PROCESSOR_NAME)
        if push_to_hub:
            self.push_to_hub(**hub_options)
        return [str(Path(save_directory) / IMAGE_PROCESSOR_NAME)]

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
        width), bit for bit as cv2's `INTER_LINEAR` on uint8 (mmseg's `mmcv.imresize`); returns uint8, on the images'
        device. The kernel is [`fpn_seg.opencv_exact.resize_linear_uint8`] (cv2's 11-bit fixed point; float
        bilinear + rounding is off by one grey level on ~12% of the values)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"resize_image expects uint8 images (see image_to_tensor); got {images.dtype}.")
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        return resize_linear_uint8(images, size)

    def resize_label(self, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Nearest-neighbour resize of label maps (H, W) or (B, H, W) to `size` = (height, width), any dtype, with
        cv2's `INTER_NEAREST` source indices ([`fpn_seg.opencv_exact.resize_nearest`]), so no new values appear."""
        if tuple(labels.shape[-2:]) == tuple(size):
            return labels
        return resize_nearest(labels, size)

    def normalize_image(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (C, H, W) or (B, C, H, W) -> float32 `(pixel - image_mean) / image_std` per channel (or plain
        0..255 floats when `do_normalize` is off), the same arithmetic as mmseg's data preprocessor, hence the same
        bits. `out`: optional contiguous float32 tensor of the same shape to write into."""
        # Channels-first bytes first (a cheap 1-byte transpose of channels-last views): the float passes then run
        # over contiguous memory.
        images = images.contiguous()
        integers = images.to(torch.int32)  # uint8 -> int32 -> float32: the same values, ~6x faster on the CPU
        out = integers.to(torch.float32) if out is None else out.copy_(integers)
        if self.do_normalize:
            channels = out.shape[-3]
            if len(self.image_mean) != channels:
                raise ValueError(
                    f"{type(self).__name__}: the images have {channels} channels but image_mean / image_std have "
                    f"{len(self.image_mean)} values; give one per channel."
                )
            mean = torch.tensor(self.image_mean, dtype=torch.float32, device=out.device).view(channels, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32, device=out.device).view(channels, 1, 1)
            out.sub_(mean).div_(std)
        return out

    @property
    def label_policy(self) -> LabelPolicy:
        """This processor's label policy (`do_reduce_labels`, `label_map`, `ignore_index`) as one value."""
        return LabelPolicy.of(self)

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Raw annotation values -> training ids under this processor's label policy (int64, same shape)."""
        return self.label_policy.encode(labels)

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
            segmentation_maps: one map per image, in any form [`label_to_tensor`] reads (a 3-D array / tensor whose
                first size is the number of images is a batch), each the size of its image. Encoded with the label
                policy, resized (nearest) like the image.
            return_tensors: `"pt"`: `pixel_values` (B, C, H, W) float32, `labels` (B, H, W) int64, and, when the images
                resize to different sizes, `pixel_mask` (B, H, W) int64 with the padding (bottom / right; zeros in
                `pixel_values`, `ignore_index` in `labels`) at 0; `"np"`: the same as numpy arrays; `None`: lists of
                per-image tensors, unpadded.
            overrides: any constructor option, for this call only (e.g. `do_resize=False`), and `input_data_format`,
                `data_format` ("channels_first"), `device`: where the work runs and the tensors live (the uint8
                images are sent there, then resized and normalised there; default: the device of uint8 tensor
                inputs, else the CPU).
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None; got {return_tensors!r}.")
        processor = self._with_overrides(overrides)
        if _channel_layout(processor.data_format, "data_format") == "channels_last":
            raise ValueError("data_format='channels_last' is not supported: the model takes (B, C, H, W) pixel_values.")
        image_tensors = [
            image_to_tensor(image, processor.do_convert_rgb is not False, processor.input_data_format)
            for image in _as_list(images, batched_ndim=4)
        ]
        if not image_tensors:
            raise ValueError("preprocess got no images.")
        device = _working_device(processor.device, image_tensors) if return_tensors != "np" else torch.device("cpu")
        sizes = [processor.test_size(*image.shape[-2:]) for image in image_tensors]
        data = processor._pixel_values(image_tensors, sizes, stacked=return_tensors is not None, device=device)
        if segmentation_maps is not None:
            labels = processor._labels(segmentation_maps, image_tensors, sizes)
            labels = labels if return_tensors is None else _stack_padded(labels, sizes, processor.ignore_index)
            data["labels"] = _to_device(labels, device)
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    def _pixel_values(
        self, images: list[torch.Tensor], sizes: list[tuple[int, int]], stacked: bool, device: torch.device
    ) -> dict:
        """Resize + normalise each image on `device` (the uint8 image goes there first: 1 byte per value to copy,
        and the resize is exact on any device): `{"pixel_values": [...]}` per image, or, when `stacked`, one
        (B, C, H, W) tensor written in place (images of different sizes padded with zeros, plus their `pixel_mask`)."""
        if not stacked:
            resized = [self.resize_image(image.to(device), size) for image, size in zip(images, sizes)]
            return {"pixel_values": [self.normalize_image(image) for image in resized]}
        height, width = max(size[0] for size in sizes), max(size[1] for size in sizes)
        padded = any(tuple(size) != (height, width) for size in sizes)
        shape = (len(images), images[0].shape[0], height, width)
        batch = torch.zeros(shape, device=device) if padded else torch.empty(shape, device=device)
        for index, (image, size) in enumerate(zip(images, sizes)):
            resized = self.resize_image(image.to(device), size)
            if padded:
                batch[index, :, : size[0], : size[1]] = self.normalize_image(resized)
            else:
                self.normalize_image(resized, out=batch[index])
        if not padded:
            return {"pixel_values": batch}
        masks = [torch.ones(size, dtype=torch.int64, device=device) for size in sizes]
        return {"pixel_values": batch, "pixel_mask": _stack_padded(masks, sizes, 0)}

    def _labels(self, segmentation_maps, images: list[torch.Tensor], sizes: list[tuple[int, int]]):
        """Read, check, encode and resize the segmentation maps: a list of (H_i, W_i) int64 tensors."""
        labels = [label_to_tensor(label) for label in _label_list(segmentation_maps, len(images))]
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
        self,
        outputs,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Model outputs -> one (H, W) int64 label map per image, on the device of the logits.

        Each image's logits (N, h, w) (at the input size, as the model returns them; cropped to the image's own
        region when the batch was padded: `outputs.image_sizes`) are resized to `target_sizes[i]` = (H, W), the
        original image size, bilinearly with align_corners=False, then the argmax is taken, as mmseg does. Without
        `target_sizes` the argmax is taken at the logits' size. The work runs where the logits are (a GPU's logits
        never come to the CPU here); images of one size are resized as one batch.

        With `return_segmentation_scores=True`, each item is a `SemanticSegmentationPostProcessorOutput` with
        `segmentation` (H, W) and `segmentation_scores` (N, H, W), the resized logits.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        image_sizes = getattr(outputs, "image_sizes", None)
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(
                f"target_sizes has {len(target_sizes)} entries but the logits hold {len(logits)} images; pass one "
                "(height, width) per image."
            )
        image_sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else image_sizes  # one sync
        targets = None if target_sizes is None else [tuple(int(side) for side in size) for size in target_sizes]
        if image_sizes is None and (targets is None or len(set(targets)) == 1):
            scores = _resized(logits.float(), None if targets is None else targets[0])  # (B, N, H, W) at once
        else:
            scores = []
            for index, image_logits in enumerate(logits):
                if image_sizes is not None:
                    height, width = (int(side) for side in image_sizes[index])
                    image_logits = image_logits[:, :height, :width]
                target = None if targets is None else targets[index]
                scores.append(_resized(image_logits[None].float(), target)[0])  # (N, H, W)
        if not return_segmentation_scores:
            if isinstance(scores, torch.Tensor):
                return list(scores.argmax(dim=1))
            return [image_scores.argmax(dim=0) for image_scores in scores]
        return [
            SemanticSegmentationPostProcessorOutput(
                data={"segmentation": image_scores.argmax(dim=0), "segmentation_scores": image_scores}
            )
            for image_scores in scores
        ]


def _resized(logits: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Logits (B, N, h, w) resized bilinearly (align_corners=False) to `size` = (H, W), as they are without one."""
    if size is None or tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _to_device(value: torch.Tensor | list[torch.Tensor], device) -> torch.Tensor | list[torch.Tensor]:
    return [item.to(device) for item in value] if isinstance(value, list) else value.to(device)


def _working_device(device, images: list[torch.Tensor]) -> torch.device:
    """Where `preprocess` works: the `device` asked for, else the device of the image tensors when they share one
    (uint8 tensors already on a GPU are resized there), else the CPU."""
    if device is not None:
        return torch.device(device)
    devices = {image.device for image in images}
    return devices.pop() if len(devices) == 1 else torch.device("cpu")


def _stack_padded(maps: list[torch.Tensor], sizes: list[tuple[int, int]], fill: int) -> torch.Tensor:
    """Per-image (h_i, w_i) maps -> one (B, H, W) tensor, each padded at the bottom / right with `fill`."""
    height, width = max(size[0] for size in sizes), max(size[1] for size in sizes)
    stacked = maps[0].new_full((len(maps), height, width), fill)
    for index, (item, (h, w)) in enumerate(zip(maps, sizes)):
        stacked[index, :h, :w] = item
    return stacked


__all__ = [
    "CorruptImageError",
    "ImageFileError",
    "ImageTooLargeError",
    "NotAnImageError",
    "SemanticFPNImageProcessor",
    "SemanticFPNImageProcessorKwargs",
    "image_to_tensor",
    "label_to_tensor",
    "open_image",
]
