"""Image files named on a command line (files, folders searched recursively, glob patterns) and reading one of them
into a uint8 tensor, with a one-line reason when it cannot be used; shared by `fpn-seg predict`, the calibration
images of `fpn-seg export --int8` and the examples of `fpn-seg app`.
"""

import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .image_reading import ImageFileError, ImageTooLargeError, image_to_tensor, open_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_EXTENSIONS_TEXT = ", ".join(IMAGE_EXTENSIONS)


class ImageInputError(ValueError):
    """The arguments name no usable image file (no such path, nothing matched, clashing output names)."""


class ImageReadError(Exception):
    """One image file cannot be used (not an image, truncated, too large); callers skip it or stop, naming it."""


@dataclass
class ImageInput:
    """One image file: its `path`, and `stem`, its location relative to where its argument starts (no suffix), for
    outputs that keep the inputs' sub-folders."""

    path: Path
    stem: Path


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard (where the relative output paths start)."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _images_outside(files: list[Path], skip_folder: Path | None, what: str) -> list[Path]:
    """The image files of `files` outside `skip_folder`; an `ImageInputError` starting with `what` when none is left."""
    images = [file for file in files if _is_image_file(file)]
    kept = [file for file in images if not _inside(file, skip_folder)]
    if not images:
        raise ImageInputError(f"{what} no image files (extensions {_EXTENSIONS_TEXT}).")
    if not kept:
        raise ImageInputError(
            f"{what} only image files inside --output-dir {str(skip_folder)!r}, which are skipped (they may be "
            "earlier outputs); write the outputs to another folder."
        )
    return kept


def _expand_input(text: str, skip_folder: Path | None, argument: str) -> list[ImageInput]:
    """One argument -> the images it names (a file, a folder searched recursively, or a glob pattern); files found in
    a folder or by a pattern are left out when they lie inside `skip_folder` (an output folder)."""
    path = Path(text).expanduser()
    if path.is_file():
        return [ImageInput(path, Path(path.stem))]
    if path.is_dir():
        files = _images_outside(sorted(path.rglob("*")), skip_folder, f"{argument} folder {text!r} holds")
        return [ImageInput(file, file.relative_to(path).with_suffix("")) for file in files]
    if glob.has_magic(text):
        base = _glob_base(os.path.expanduser(text))
        matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(text), recursive=True))
        files = _images_outside(matches, skip_folder, f"{argument} pattern {text!r} matched")
        return [ImageInput(file, file.relative_to(base).with_suffix("")) for file in files]
    raise ImageInputError(f"{argument} {text!r}: no such file or folder (and not a glob pattern).")


def collect_image_inputs(
    inputs: Sequence[str], skip_folder: Path | None = None, argument: str = "INPUT"
) -> list[ImageInput]:
    """Expand file, folder and glob arguments into images, in the order given.

    Folders and patterns do not pick up files inside `skip_folder` (earlier outputs, when the output folder lies
    inside an input folder); files named directly are always taken. The same file named twice is taken once. Errors
    (an `ImageInputError`) start with `argument`, the name the user typed.
    """
    images, seen = [], set()
    for text in inputs:
        for item in _expand_input(str(text), skip_folder, argument):
            if item.path.resolve() not in seen:
                seen.add(item.path.resolve())
                images.append(item)
    return images


def make_stems_distinct(images: list[ImageInput]) -> list[ImageInput]:
    """Give images whose stems clash (`a.png` and `a.jpg` in one folder) their extension in the stem (`a_png`,
    `a_jpg`), for commands that name outputs after the stems; a clash that remains raises an `ImageInputError`."""
    by_stem: dict[Path, list[ImageInput]] = {}
    for item in images:
        by_stem.setdefault(item.stem, []).append(item)
    for clashing in (group for group in by_stem.values() if len(group) > 1):
        for item in clashing:
            item.stem = item.stem.with_name(f"{item.stem.name}_{item.path.suffix.lstrip('.').lower()}")
    final: dict[Path, ImageInput] = {}
    for item in images:
        if item.stem in final:
            raise ImageInputError(
                f"{final[item.stem].path} and {item.path} would write the same outputs ({item.stem}_label.png); "
                "run them separately with different --output-dir."
            )
        final[item.stem] = item
    return images


def _looks_like_label_map(image: Image.Image, max_values: int = 40) -> bool:
    """Whether a decoded image is probably a label map given by mistake: a single-channel grey (8 or 16-bit) picture
    with at most `max_values` distinct values (Cityscapes label ids: 34 and 255; grey photos have hundreds). Palette
    images are left out: few-colour GIFs and PNGs are photos too."""
    if image.mode not in ("L", "I", "I;16") or image.width * image.height < 64:
        return False
    return len(np.unique(np.asarray(image))) <= max_values


def raise_pillow_pixel_limit(max_pixels: int) -> int | None:
    """Raise Pillow's `MAX_IMAGE_PIXELS` (its warning threshold; twice it, its decompression-bomb refusal) to
    `max_pixels` when it is lower, so that the command's own limit, named in its messages, decides. Process-wide;
    returns the previous value, for the caller to restore."""
    previous = Image.MAX_IMAGE_PIXELS
    if previous is not None and max_pixels > previous:
        Image.MAX_IMAGE_PIXELS = max_pixels
    return previous


def read_image(path: Path, max_pixels: int) -> torch.Tensor:
    """An image file -> (3, H, W) uint8 RGB tensor (any mode, EXIF orientation applied); `ImageReadError` naming the
    reason when it is not a readable image or holds more than `max_pixels` pixels (checked from the header, before
    decoding). A grey image that looks like a label map gets a note on stderr."""
    try:
        image = open_image(path, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        if error.limit is None:  # Pillow's decompression-bomb limit
            raise ImageReadError(error.reason) from error
        raise ImageReadError(
            f"{error.amount}, above the limit --max-pixels {max_pixels} (the class scores at full size take "
            "num_labels x 4 bytes per pixel); pass a larger --max-pixels to segment it."
        ) from error
    except ImageFileError as error:
        raise ImageReadError(error.reason) from error
    if _looks_like_label_map(image):
        print(
            f"note: {path} looks like a label map (one channel, few distinct values), not a photo; it is segmented "
            "as a grey picture.",
            file=sys.stderr,
        )
    try:
        return image_to_tensor(image)
    except (ValueError, TypeError) as error:  # modes Pillow cannot convert to RGB
        raise ImageReadError(f"cannot read it: {error}") from error


__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageInputError",
    "ImageReadError",
    "collect_image_inputs",
    "make_stems_distinct",
    "raise_pillow_pixel_limit",
    "read_image",
]
