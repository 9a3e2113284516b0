"""Reading training examples in DataLoader workers, with errors that name the files.

- [`storage_columns`]: a dataset whose `datasets.Image` columns give their storage (`{"bytes", "path"}`) instead of
  decoded images, so that the reader knows each file's name;
- [`read_training_example`]: one example -> uint8 `(3, H, W)` image, raw `(H, W)` label map (uint8 for 8-bit label
  files), and the names of its files; unreadable files, a label map of another size than its image and labels marked
  with another label policy are a [`TrainingDataError`] naming the files. Files are opened by `open_image` (Pillow,
  the package's one image opener, and its errors); when OpenCV is installed, 8-bit PNG and JPEG files are decoded
  by OpenCV (mmseg's decoder: the same pixels, 15-25% less CPU time for a 1024x2048 PNG with the conversion to
  numpy that it spares);
- [`ReadingLog`]: what each worker process is reading, so that a worker that dies (killed by the kernel, a crash in a
  decoder) is reported with the file it was reading ([`ReadingLog.describe_worker_failure`]).

A `TrainingDataError` raised inside a DataLoader worker reaches the main process as a `TrainingDataError` with the
same one-line message (plus the worker's number), not as torch's multi-line re-raise.
"""

import os
import re
import shutil
import tempfile
import weakref
from typing import Any

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Image

from ..image_reading import ImageFileError, image_to_tensor, open_image
from ..optional_opencv import load_opencv
from .label_marks import check_label_policy
from .transforms import raw_label_tensor

_EXIF_ORIENTATION = 0x0112

_WORKER_DEATH = re.compile(r"DataLoader worker \(pids?\(?s?\)? ([\d, ]+)\)")
_CAUGHT = re.compile(r"^Caught TrainingDataError (in DataLoader worker process \d+)\.")


class TrainingDataError(RuntimeError):
    """A training example that cannot be used, or a DataLoader worker that died; the message names the file(s).

    Inside a DataLoader worker, torch re-creates the exception in the main process from a message holding the
    worker's traceback (`TrainingDataError(message=...)`, because the class has a `message`): the constructor keeps
    only the original one-line message and says which worker raised it."""

    def __init__(self, message: str):
        caught = _CAUGHT.match(message)
        if caught:
            original = message.rstrip().splitlines()[-1]
            original = original.split("TrainingDataError: ", 1)[-1]
            message = f"{original} ({caught.group(1)})"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


def storage_columns(dataset: Dataset, columns: list[str]) -> Dataset:
    """`dataset` with its `datasets.Image` columns among `columns` read as storage dicts (`{"bytes", "path"}`); other
    columns (arrays, already decoded images) are left as they are."""
    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, Image) and feature.decode:
            dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def _name(value: Any, fallback: str) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return getattr(value, "filename", None) or fallback


def _source(value: Any) -> bytes | str | os.PathLike | None:
    """The bytes or path of a storage dict or path; `None` for anything else (an image object, an array)."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value if isinstance(value, (str, os.PathLike)) else None


def _decode_with_opencv(source: bytes | str | os.PathLike, header, label: bool) -> np.ndarray | None:
    """OpenCV's decoding of an 8-bit PNG or JPEG file whose Pillow header says that it gives the same pixels as
    Pillow (PNG: lossless; JPEG: both libjpeg-turbo, checked in the tests); `None` when it does not apply or fails
    (Pillow then decodes, and raises its errors that name the file). It decodes straight into an array, which spares
    Pillow's conversion to numpy (an image's worth of copies)."""
    cv2 = load_opencv()
    if cv2 is None or header.format not in ("PNG", "JPEG") or header.mode not in (("L",) if label else ("RGB", "L")):
        return None
    if header.format == "PNG" and "exif" in header.info:  # keep EXIF handling to Pillow
        return None
    if header.format == "JPEG" and header.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return None
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    flags = cv2.IMREAD_UNCHANGED if label else cv2.IMREAD_COLOR_RGB
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _read_image(value: Any, name: str) -> torch.Tensor:
    source = _source(value)
    if source is None:  # an image object or array (nested lists: a `datasets` column of arrays)
        return image_to_tensor(np.asarray(value) if isinstance(value, list) else value)
    with open_image(source, name, decode=False) as header:
        array = _decode_with_opencv(source, header, label=False)
    if array is None:
        return image_to_tensor(open_image(source, name))
    return torch.from_numpy(array).permute(2, 0, 1)


def _read_label(value: Any, name: str, processor) -> torch.Tensor:
    source = _source(value)
    if source is None:
        check_label_policy(value, processor)
        return raw_label_tensor(np.asarray(value) if isinstance(value, list) else value)
    with open_image(source, name, decode=False) as header:
        check_label_policy(header, processor)  # the mark is a text chunk before the pixels
        array = _decode_with_opencv(source, header, label=True)
    if array is None:
        return raw_label_tensor(open_image(source, name))
    return torch.from_numpy(array)


def example_files(example: dict[str, Any], index: int, image_column: str, label_column: str) -> tuple[str, str]:
    """The names of an example's image and label files (or what stands for them), for messages."""
    return (
        _name(example[image_column], f"image of training example {index}"),
        _name(example[label_column], f"label map of training example {index}"),
    )


def read_training_example(
    example: dict[str, Any], index: int, image_column: str, label_column: str, processor
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 (3, H, W) image, raw (H, W) labels, a description of the example's files) of one example; raises a
    [`TrainingDataError`] naming the files when they cannot be read, differ in size or carry another label policy."""
    image_name, label_name = example_files(example, index, image_column, label_column)
    try:
        image = _read_image(example[image_column], image_name)
        labels = _read_label(example[label_column], label_name, processor)
    except (ImageFileError, FileNotFoundError, ValueError, TypeError) as error:
        raise TrainingDataError(f"training example {index}: {error}".replace("\n", " ")) from error
    if tuple(image.shape[-2:]) != tuple(labels.shape):
        raise TrainingDataError(
            f"training example {index}: the label map {label_name} is {labels.shape[1]}x{labels.shape[0]} but its "
            f"image {image_name} is {image.shape[-1]}x{image.shape[-2]} (width x height); a label map must be the "
            "size of its image."
        )
    return image, labels, f"{image_name} + {label_name}"


def _remove_folder(folder: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked worker's copy
        shutil.rmtree(folder, ignore_errors=True)


class ReadingLog:
    """What each DataLoader worker process is reading: one small file per worker (named by its pid) in a private
    temporary folder, removed with this object. Outside workers, `record` does nothing."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="fpn_seg_reading_")
        self._cleanup = weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def __getstate__(self) -> dict:  # the folder travels to the workers; the finalizer stays with the owner
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.folder = state["folder"]

    def record(self, what: str) -> None:
        if torch.utils.data.get_worker_info() is None:
            return
        with open(os.path.join(self.folder, str(os.getpid())), "w", encoding="utf-8") as file:
            file.write(what)

    def reading(self, pid: int) -> str | None:
        try:
            with open(os.path.join(self.folder, str(pid)), encoding="utf-8") as file:
                return file.read() or None
        except OSError:
            return None

    def describe_worker_failure(self, error: BaseException) -> str | None:
        """For torch's "DataLoader worker (pid N) ..." errors: the message naming what each dead worker was reading
        (`None` for other errors)."""
        found = _WORKER_DEATH.search(str(error))
        if not found:
            return None
        pids = [int(pid) for pid in re.findall(r"\d+", found.group(1))]
        reading = [f"pid {pid} was reading {self.reading(pid) or 'nothing known'}" for pid in pids]
        return (
            f"a DataLoader worker died ({str(error).strip().splitlines()[0]}): {'; '.join(reading)}. A worker is "
            "killed when the machine runs out of memory (fewer --dataloader_num_workers or a smaller "
            "--dataloader_prefetch_factor help) or when a decoder crashes on a file (check that file)."
        )


__all__ = ["ReadingLog", "TrainingDataError", "example_files", "read_training_example", "storage_columns"]
