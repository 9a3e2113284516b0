"""Pictures of predictions and training: colour overlays with a legend, label PNGs, training curves."""

import functools
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

from .label_sets import CITYSCAPES_CLASSES, label_palette
from .optional_opencv import load_opencv


def palette_for(id2label: Mapping[int, str]) -> np.ndarray:
    """(num_labels, 3) uint8 colours: the Cityscapes palette when the classes are Cityscapes', else a generated one."""
    names = tuple(id2label[i] for i in range(len(id2label)))
    dataset = "cityscapes" if names == CITYSCAPES_CLASSES[: len(names)] else None
    return np.asarray(label_palette(len(names), dataset), dtype=np.uint8)


def class_pixel_counts(label_map: np.ndarray | torch.Tensor, num_labels: int) -> np.ndarray:
    """(num_labels,) int64 pixel counts per class of a map of class ids (other values, e.g. 255, are not counted)."""
    labels = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map).ravel()
    return np.bincount(labels[(labels >= 0) & (labels < num_labels)], minlength=num_labels)


def colorize(label_map: np.ndarray | torch.Tensor, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; `ignore_index` and out-of-range ids are black."""
    labels = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map).astype(np.int64)
    colours = np.zeros((*labels.shape, 3), dtype=np.uint8)
    known = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    colours[known] = palette[labels[known]]
    return colours


@functools.lru_cache(maxsize=8)
def blend_table(alpha: float) -> np.ndarray:
    """(256, 256) uint8 table of `(1 - alpha) * image + alpha * colour` for every image value (rows) and colour value
    (columns), computed in float32 and truncated, as the overlay always blended: a lookup gives the same bytes."""
    image = np.arange(256, dtype=np.float32)[:, None]
    colour = np.arange(256, dtype=np.float32)[None, :]
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).astype(np.uint8)


def blend(
    image: np.ndarray | torch.Tensor,
    label_map: np.ndarray | torch.Tensor,
    palette: np.ndarray,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray | torch.Tensor:
    """(H, W, 3) uint8 `image` blended with the colours of `label_map` (H, W) (`ignore_index` and ids outside the
    palette: black), by table lookup ([`blend_table`]). Numpy arrays in, numpy out; torch tensors (on any device,
    e.g. the GPU that computed the label map) in, a tensor on that device out."""
    if isinstance(image, torch.Tensor):
        device = image.device
        table = torch.from_numpy(blend_table(float(alpha))).to(device).view(-1)
        colours = torch.zeros((len(palette) + 1, 3), dtype=torch.long, device=device)  # the last row: black
        colours[:-1] = torch.from_numpy(palette.astype(np.int64)).to(device)
        labels = label_map.to(device=device, dtype=torch.long)
        known = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
        mask = colours[torch.where(known, labels, len(palette))]  # (H, W, 3)
        return table[image.long() * 256 + mask]
    labels = np.asarray(label_map)
    colours = np.concatenate([palette.astype(np.uint8), np.zeros((1, 3), dtype=np.uint8)])  # the last row: black
    known = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    mask = np.take(colours, np.where(known, labels, len(palette)), axis=0)  # (H, W, 3) uint8
    return np.take(blend_table(float(alpha)).ravel(), (image.astype(np.uint16) << 8) | mask)


@functools.lru_cache(maxsize=64)
def _legend(names: tuple[str, ...], colours: tuple[tuple[int, int, int], ...], height: int) -> np.ndarray:
    """The legend (class swatches and names) as an (H', W', 3) uint8 array; drawn once per set of classes and height
    (the array is shared: do not modify it)."""
    font = ImageFont.load_default()
    row = 16
    width = 24 + max((int(font.getlength(name)) for name in names), default=40) + 8
    legend = Image.new("RGB", (width, max(height, row * len(names) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for index, (name, colour) in enumerate(zip(names, colours)):
        top = 4 + index * row
        draw.rectangle([4, top, 16, top + 12], fill=colour, outline=(0, 0, 0))
        draw.text((22, top), name, fill=(0, 0, 0), font=font)
    array = np.asarray(legend)
    array.flags.writeable = False
    return array


def overlay_array(
    blended: np.ndarray, pixel_counts: np.ndarray, id2label: Mapping[int, str], palette: np.ndarray,
    ignore_index: int = 255,
) -> np.ndarray:
    """An overlay picture (H', W + legend, 3) uint8: the `blended` image (H, W, 3) with, to its right, a legend of
    the classes whose `pixel_counts` (num_labels,) are not zero (see [`class_pixel_counts`])."""
    present = [index for index in range(min(len(palette), len(pixel_counts))) if pixel_counts[index]
               and index != ignore_index]  # fmt: skip
    names = tuple(id2label[index] for index in present)
    legend = _legend(names, tuple(tuple(int(value) for value in palette[index]) for index in present), blended.shape[0])
    height, width = blended.shape[:2]
    canvas = np.full((max(height, legend.shape[0]), width + legend.shape[1], 3), 255, dtype=np.uint8)
    canvas[:height, :width] = blended
    canvas[: legend.shape[0], width:] = legend
    return canvas


def overlay(
    image: Image.Image,
    label_map: np.ndarray | torch.Tensor,
    id2label: Mapping[int, str],
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Image.Image:
    """The image blended with the colour mask of `label_map` (same size), with a legend of the classes present."""
    # Upright as image_to_tensor (and so the label maps of `segment`) reads it: the EXIF orientation is applied.
    rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    labels = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map of size {labels.shape} does not match the image size {rgb.shape[:2]}.")
    palette = palette_for(id2label)
    blended = blend(rgb, labels, palette, alpha, ignore_index)
    counts = class_pixel_counts(labels, len(palette))
    return Image.fromarray(overlay_array(blended, counts, id2label, palette, ignore_index))


def save_overlay_png(
    picture: Image.Image | np.ndarray, path: str | Path, text: Mapping[str, str] | None = None
) -> None:
    """Write an RGB overlay as PNG, fast: Huffman coding only (no LZ77 matching, which finds little in photos), with
    OpenCV's encoder and the `Sub` row filter where the `[opencv]` extra is installed (and no `text` chunks are
    asked for), else with Pillow's. On a 1024x2048 overlay (one core): 0.11 s (OpenCV) or 0.21 s (Pillow), against
    0.29 s at zlib level 1 and ~1 s at Pillow's default level, for files 0.9-0.95x the size of level 1's. The pixels
    are the same whichever encoder writes them."""
    cv2 = load_opencv()
    if cv2 is not None and not text and isinstance(picture, np.ndarray) and picture.ndim == 3:
        options = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                   cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]  # fmt: skip
        encoded, data = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]), options)  # RGB -> BGR
        if encoded:
            Path(path).write_bytes(data.tobytes())
            return
    picture = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    picture.save(path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY, pnginfo=png_text(text))


def save_label_png(label_map: np.ndarray | torch.Tensor, path: str | Path, text: Mapping[str, str] | None = None) -> None:
    """Write class ids as an 8-bit (or 16-bit when ids exceed 255) single-channel PNG; `text`: PNG text chunks."""
    labels = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map)
    if labels.min(initial=0) < 0:
        raise ValueError("label maps with negative ids cannot be written as PNG.")
    picture = Image.fromarray(labels.astype(np.uint8), mode="L") if labels.max(initial=0) <= 255 else Image.fromarray(
        labels.astype(np.uint16)
    )
    picture.save(path, pnginfo=png_text(text))


def png_text(text: Mapping[str, str] | None) -> PngImagePlugin.PngInfo | None:
    """PNG text chunks for `Image.save(..., pnginfo=...)`."""
    if not text:
        return None
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


def plot_training_curves(log_history: Sequence[Mapping], path: str | Path, title: str = "Training") -> Path:
    """Training loss and evaluation mIoU against the step, from `Trainer.state.log_history`, as a PNG."""
    # A bare Figure (no pyplot): nothing global changes, so notebooks keep their own matplotlib backend.
    from matplotlib.figure import Figure

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evaluation = [
        (entry["step"], entry["eval_mean_iou"]) for entry in log_history if "eval_mean_iou" in entry and "step" in entry
    ]
    figure = Figure(figsize=(7, 4), dpi=100)
    loss_axis = figure.subplots()
    if train:
        loss_axis.plot(*zip(*train), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if evaluation:
        iou_axis = loss_axis.twinx()
        iou_axis.plot(*zip(*evaluation), "o-", color="tab:orange", label="validation mIoU")
        iou_axis.set_ylabel("validation mIoU", color="tab:orange")
        iou_axis.set_ylim(0, 1)
    loss_axis.set_title(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


__all__ = [
    "blend",
    "blend_table",
    "class_pixel_counts",
    "colorize",
    "overlay",
    "overlay_array",
    "palette_for",
    "plot_training_curves",
    "save_label_png",
    "save_overlay_png",
]
