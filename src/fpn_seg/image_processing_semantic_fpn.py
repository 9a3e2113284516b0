"""Image processor of Semantic FPN: mmsegmentation's test-time resize and normalisation, label encoding, and the
post-processing of logits into label maps at the original image size.

Hub code: imports only its sibling hub files (plus torch / transformers), so `save_pretrained` copies it (and them:
`image_reading`, `processor_options`, `opencv_exact`, ...) next to a model and a saved folder works with
`trust_remote_code=True` without `fpn_seg` installed. The processor's options are checked in `processor_options`
(`size` dicts and the `scale` alias, the refused options); images and label maps are read by `image_reading`.

Conventions, chosen to reproduce mmseg's numbers:
- Images are converted to uint8 RGB first (see [`image_to_tensor`]), as mmseg reads them; resizing is bilinear
  **without antialiasing**, bit for bit as cv2's uint8 `INTER_LINEAR` (mmseg's `mmcv.imresize`), before normalising.
- Label maps are resized with nearest neighbour, with cv2's `INTER_NEAREST` source indices.
- mmseg never pads at test time. A batch of images that resize to different sizes is stacked padded (bottom/right,
  zeros) with a `pixel_mask`; the model then runs each image on its own valid region in eval mode and the
  post-processing crops it back, so an image's result never depends on its batch neighbours.
"""

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs
from transformers.utils import IMAGE_PROCESSOR_NAME

from .atomic import save_folder_atomically, split_push_options
from .image_reading import as_list, channel_layout, image_to_tensor, label_list, label_to_tensor
from .label_policy import LabelPolicy
from .opencv_exact import resize_linear_uint8, resize_nearest
from .processor_options import (
    BILINEAR,
    batch_shape,
    output_size,
    refuse_not_applicable,
    resolve_size,
    scale_of,
    scaled_size,
    size_from_scale,
    standardize_options,
)


class SemanticFPNImageProcessorKwargs(ImagesKwargs, total=False):
    """Options of [`SemanticFPNImageProcessor`]: transformers' `ImagesKwargs` plus `scale` (mmseg's form of the
    keep-ratio `size`, an alias) and the label policy (constructor arguments; also per-call overrides of
    `preprocess`)."""

    scale: list[int] | tuple[int, int] | None
    do_reduce_labels: bool | None
    label_map: dict[int, int] | None
    ignore_index: int | None


class SemanticFPNImageProcessor(BaseImageProcessor):
    r"""
    Image processor of Semantic FPN, reproducing mmsegmentation's test pipeline: keep-ratio resize into `size`
    (bilinear without antialiasing, rounded to uint8), normalisation with mmseg's mean/std on 0..255 RGB, and the
    label policy (`do_reduce_labels`, `label_map`, `ignore_index`; as one object, [`label_policy`]) applied by
    [`encode_labels`].

    Batching: images are processed one by one. With `return_tensors="pt"` (or `"np"`) they are stacked into
    `pixel_values` (B, C, H, W); when they resize to different sizes, each is padded at the bottom and right (zeros)
    to the largest height and width (or to `pad_size`) and a `pixel_mask` (B, H, W), 1 on each image's own pixels, is
    added. The model then runs each image on its own region in eval mode and `post_process_semantic_segmentation`
    crops the logits to it, so every image gets the label map it gets alone. `return_tensors=None` returns lists of
    per-image tensors.

    Args:
        do_resize (`bool`, defaults to `True`):
            Resize to `size`.
        size (`dict[str, int]`, defaults to `{"shortest_edge": 1024, "longest_edge": 2048}`):
            `{"shortest_edge": s, "longest_edge": l}`: keep the ratio, factor `f = min(s / min(h, w), l / max(h, w))`,
            new size `int(h * f + 0.5), int(w * f + 0.5)` (mmseg's keep-ratio rule for `scale=(l, s)`); either key
            alone bounds one side. `{"height": h, "width": w}`: a fixed size. Cityscapes: 1024 / 2048; ADE20K: 512 /
            2048.
        scale (`list[int]`, *optional*):
            Alias of the keep-ratio `size` in mmseg's form `(long side, short side)` (constructor, `from_pretrained`
            and per call; older `preprocessor_config.json` files hold it). Given with a different `size`: `ValueError`.
            Read back as `[longest_edge, shortest_edge]` (None for other `size` settings).
        resample (defaults to `PILImageResampling.BILINEAR`):
            Only bilinear: OpenCV's uint8 `INTER_LINEAR`, bit for bit as mmseg's; other filters are refused.
        do_rescale (`bool`, defaults to `False`), rescale_factor (`float`, defaults to `1 / 255`):
            Multiply the pixels by `rescale_factor` before normalising (transformers' convention, with mean / std on
            0..1); mmseg normalises 0..255 values, hence off by default.
        do_normalize (`bool`, defaults to `True`):
            `(pixel - image_mean) / image_std` per channel, on 0..255 values (unless `do_rescale`).
        image_mean (`list[float]`, defaults to `[123.675, 116.28, 103.53]`):
            Per-channel mean on 0..255 (one value per channel: 3 for RGB).
        image_std (`list[float]`, defaults to `[58.395, 57.12, 57.375]`):
            Per-channel standard deviation on 0..255.
        do_pad (`bool`, defaults to `True`), pad_size (`dict[str, int]`, *optional*):
            Pad a batch to one size (the largest image, or `pad_size` `{"height", "width"}`) with a `pixel_mask`.
            `do_pad=False` stacks only images of one size (`ValueError` otherwise; `return_tensors=None` gives lists).
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
    `data_format` (only "channels_first": the model's layout) and `device`. `crop_size`, `do_center_crop`,
    `default_to_square`, `disable_grouping` and `image_seq_length` do not apply to mmseg's pipeline and are refused
    with the reason (see `processor_options.NOT_APPLICABLE`).
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = SemanticFPNImageProcessorKwargs

    do_resize: bool = True
    size: dict[str, int] = {"shortest_edge": 1024, "longest_edge": 2048}
    resample = BILINEAR
    do_rescale: bool = False
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: list[float] = [123.675, 116.28, 103.53]
    image_std: list[float] = [58.395, 57.12, 57.375]
    do_pad: bool = True
    pad_size: dict[str, int] | None = None
    do_convert_rgb: bool = True
    do_reduce_labels: bool = False
    label_map: dict[int, int] | None = None
    ignore_index: int = 255
    # Per-call options (not saved): where the channels of array inputs are, the output layout and device.
    input_data_format = None
    data_format = None
    device = None
    _options = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                "image_std", "do_pad", "pad_size", "do_convert_rgb", "do_reduce_labels", "label_map",
                "ignore_index")  # fmt: skip
    _call_options = ("input_data_format", "data_format", "device", "return_tensors")

    def __init__(self, **kwargs):
        options = {name: kwargs.pop(name) for name in self._options if name in kwargs}
        scale = kwargs.pop("scale", None)
        refuse_not_applicable(kwargs, type(self).__name__)
        for name in self._call_options:
            if kwargs.pop(name, None) is not None:
                raise TypeError(
                    f"{type(self).__name__}: {name} is an option of a call (preprocess), not of the processor."
                )
        super().__init__(**kwargs)
        for name in self._options:  # an explicit None is kept (it switches the step off); unset ones get the default
            setattr(self, name, options[name] if name in options else copy.deepcopy(getattr(type(self), name)))
        if scale is not None:
            self.size = resolve_size(options.get("size"), scale, type(self).__name__)
        self._standardize_options()

    @property
    def scale(self) -> list[int] | None:
        """mmseg's form of the keep-ratio `size`: `[longest_edge, shortest_edge]`; None for other `size` settings.
        Setting it sets `size`."""
        return scale_of(self.size)

    @scale.setter
    def scale(self, value) -> None:
        self.size = resolve_size(None, value, type(self).__name__)

    def _standardize_options(self) -> None:
        """Give every option its canonical type (JSON turns int keys into strings); check it."""
        options = {name: getattr(self, name) for name in self._options}
        self.__dict__.update(standardize_options(options, type(self).__name__))

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "SemanticFPNImageProcessor":
        """A processor carrying the label policy (`reduce_labels`, `label_map`, `ignore_index`) of a
        `SemanticFPNConfig`; `kwargs` set the other options (e.g. `size`)."""
        return cls(**{**LabelPolicy.of(config).processor_options(), **kwargs})

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs) -> "SemanticFPNImageProcessor":
        """As transformers' `from_dict`; a `size` or `scale` keyword replaces the saved resize setting (of either
        name), so `from_pretrained(folder, scale=...)` overrides a saved `size`."""
        if kwargs.get("size") is not None or kwargs.get("scale") is not None:
            image_processor_dict = {k: v for k, v in image_processor_dict.items() if k not in ("size", "scale")}
        return super().from_dict(image_processor_dict, **kwargs)

    def _with_overrides(self, overrides: dict[str, Any]) -> "SemanticFPNImageProcessor":
        """A shallow copy of this processor with some options replaced (the `preprocess(**overrides)` mechanism);
        `None` values keep the processor's own setting, as in transformers' processors."""
        overrides = {name: value for name, value in overrides.items() if value is not None}
        where = f"{type(self).__name__}.preprocess"
        refuse_not_applicable(overrides, where)
        if "scale" in overrides:
            overrides["size"] = resolve_size(overrides.get("size"), overrides.pop("scale"), where)
        valid = (*self._options, "scale", *self._call_options)
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

    def size_at_ratio(self, ratio: float, height: int, width: int) -> dict[str, int]:
        """The `size` setting of multi-scale testing at `ratio` for an `height` x `width` image: `self.size` (or,
        when `do_resize` is off, the image's own size as a keep-ratio setting) with each side `int(side * ratio)`,
        as mmseg's `MultiScaleFlipAug` scales `(long, short)`."""
        size = self.size if self.do_resize else size_from_scale((height, width), type(self).__name__)
        return scaled_size(size, ratio)

    def test_size(self, height: int, width: int, ratio: float = 1.0) -> tuple[int, int]:
        """The size `(new_height, new_width)` an `height` x `width` image is resized to: under `size` (see
        `processor_options.output_size`; the image's own size when `do_resize` is off), at `ratio` for multi-scale
        testing ([`size_at_ratio`])."""
        if not self.do_resize and ratio == 1.0:
            return int(height), int(width)
        return output_size(self.size_at_ratio(ratio, height, width), height, width)

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
        bits; with `do_rescale`, the pixels are multiplied by `rescale_factor` first. `out`: optional contiguous
        float32 tensor of the same shape to write into."""
        # Channels-first bytes first (a cheap 1-byte transpose of channels-last views): the float passes then run
        # over contiguous memory.
        images = images.contiguous()
        integers = images.to(torch.int32)  # uint8 -> int32 -> float32: the same values, ~6x faster on the CPU
        out = integers.to(torch.float32) if out is None else out.copy_(integers)
        if self.do_rescale:
            out.mul_(self.rescale_factor)
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
        if channel_layout(processor.data_format, "data_format") == "channels_last":
            raise ValueError("data_format='channels_last' is not supported: the model takes (B, C, H, W) pixel_values.")
        image_tensors = [
            image_to_tensor(image, processor.do_convert_rgb is not False, processor.input_data_format)
            for image in as_list(images, batched_ndim=4)
        ]
        if not image_tensors:
            raise ValueError("preprocess got no images.")
        device = _working_device(processor.device, image_tensors) if return_tensors != "np" else torch.device("cpu")
        sizes = [processor.test_size(*image.shape[-2:]) for image in image_tensors]
        where = f"{type(self).__name__}.preprocess"
        shape = None if return_tensors is None else batch_shape(sizes, processor.do_pad, processor.pad_size, where)
        data = processor._pixel_values(image_tensors, sizes, shape, device=device)
        if segmentation_maps is not None:
            labels = processor._labels(segmentation_maps, image_tensors, sizes)
            labels = labels if shape is None else _stack_padded(labels, sizes, processor.ignore_index, shape)
            data["labels"] = _to_device(labels, device)
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    def _pixel_values(
        self, images: list[torch.Tensor], sizes: list[tuple[int, int]], shape: tuple[int, int] | None, device
    ) -> dict:
        """Resize + normalise each image on `device` (the uint8 image goes there first: 1 byte per value to copy,
        and the resize is exact on any device): `{"pixel_values": [...]}` per image, or, with a batch `shape`
        (height, width), one (B, C, H, W) tensor written in place (images of other sizes padded with zeros, plus
        their `pixel_mask`)."""
        if shape is None:
            resized = [self.resize_image(image.to(device), size) for image, size in zip(images, sizes)]
            return {"pixel_values": [self.normalize_image(image) for image in resized]}
        height, width = shape
        padded = any(tuple(size) != (height, width) for size in sizes)
        full = (len(images), images[0].shape[0], height, width)
        batch = torch.zeros(full, device=device) if padded else torch.empty(full, device=device)
        for index, (image, size) in enumerate(zip(images, sizes)):
            resized = self.resize_image(image.to(device), size)
            if padded:
                batch[index, :, : size[0], : size[1]] = self.normalize_image(resized)
            else:
                self.normalize_image(resized, out=batch[index])
        if not padded:
            return {"pixel_values": batch}
        masks = [torch.ones(size, dtype=torch.int64, device=device) for size in sizes]
        return {"pixel_values": batch, "pixel_mask": _stack_padded(masks, sizes, 0, shape)}

    def _labels(self, segmentation_maps, images: list[torch.Tensor], sizes: list[tuple[int, int]]):
        """Read, check, encode and resize the segmentation maps: a list of (H_i, W_i) int64 tensors."""
        labels = [label_to_tensor(label) for label in label_list(segmentation_maps, len(images))]
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


def _stack_padded(maps: list[torch.Tensor], sizes: list[tuple[int, int]], fill: int, shape: tuple[int, int]):
    """Per-image (h_i, w_i) maps -> one (B, H, W) tensor of `shape` (H, W), each padded at the bottom / right with
    `fill`."""
    height, width = shape
    stacked = maps[0].new_full((len(maps), height, width), fill)
    for index, (item, (h, w)) in enumerate(zip(maps, sizes)):
        stacked[index, :h, :w] = item
    return stacked


__all__ = ["SemanticFPNImageProcessor", "SemanticFPNImageProcessorKwargs"]
