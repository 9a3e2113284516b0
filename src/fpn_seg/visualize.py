"""Pictures of predictions and training: colour overlays with a legend, label PNGs, training curves."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

from .label_sets import CITYSCAPES_CLASSES, label_palette


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


def _legend(names: Sequence[str], colours: Sequence[Sequence[int]], height: int) -> Image.Image:
    font = ImageFont.load_default()
    row = 16
    width = 24 + max((int(font.getlength(name)) for name in names), default=40) + 8
    legend = Image.new("RGB", (width, max(height, row * len(names) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for index, (name, colour) in enumerate(zip(names, colours)):
        top = 4 + index * row
        draw.rectangle([4, top, 16, top + 12], fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((22, top), name, fill=(0, 0, 0), font=font)
    return legend


def overlay(
    image: Image.Image,
    label_map: np.ndarray | torch.Tensor,
    id2label: Mapping[int, str],
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Image.Image:
    """The image blended with the colour mask of `label_map` (same size), with a legend of the classes present."""
    # Upright as image_to_tensor (and so the label maps of `segment`) reads it: the EXIF orientation is applied.
    rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32)
    labels = np.asarray(label_map.cpu() if isinstance(label_map, torch.Tensor) else label_map)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map of size {labels.shape} does not match the image size {rgb.shape[:2]}.")
    palette = palette_for(id2label)
    mask = colorize(labels, palette, ignore_index).astype(np.float32)
    blended = Image.fromarray(np.clip((1 - alpha) * rgb + alpha * mask, 0, 255).astype(np.uint8))
    present = [int(c) for c in np.unique(labels) if 0 <= c < len(palette) and c != ignore_index]
    legend = _legend([id2label[c] for c in present], [palette[c] for c in present], blended.height)
    canvas = Image.new("RGB", (blended.width + legend.width, max(blended.height, legend.height)), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (blended.width, 0))
    return canvas


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


__all__ = ["class_pixel_counts", "colorize", "overlay", "palette_for", "plot_training_curves", "save_label_png"]
