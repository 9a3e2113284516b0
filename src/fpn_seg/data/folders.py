"""Reading image/label pairs from folders or zip archives, shared by the dataset-specific loaders (`cityscapes.py`,
`ade20k.py`) and the `prepare` command:

- [`DataSource`]: the files of a dataset, in folders and/or zip archives, addressed by `/`-separated relative paths.
- [`ImageLabelPair`] + [`pair_files`]: image and label files matched by key; unmatched files are a clear error.
- [`LabelConversion`] + [`read_pair`]: reads one pair, checks it (readable, same size, label values) and returns the
  `datasets.Image` storage of both files, the label converted (e.g. Cityscapes label ids -> train ids) and marked
  with its label policy (`label_marks`).
"""

import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from datasets import Dataset, Features, Image
from tqdm.auto import tqdm

from ..image_reading import ImageFileError, open_image
from ..label_policy import LabelPolicy
from .label_marks import PNG_SIGNATURE, encode_label_png, mark_label_png

LABEL_FEATURES = Features({"image": Image(), "label": Image()})
_MAX_LISTED_FILES = 5


# ----------------------------------------------------------------------------------------------------------------
# Sources: folders and zip archives
# ----------------------------------------------------------------------------------------------------------------


class DataSource:
    """The files of a dataset spread over folders and/or zip archives, addressed by `/`-separated relative paths.

    A relative path is looked up in the locations in order (e.g. Cityscapes' `leftImg8bit_trainvaltest.zip` and
    `gtFine_trainvaltest.zip`, or one extracted folder). Picklable: archives are reopened in each process.
    """

    def __init__(self, locations: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(locations, (str, os.PathLike)):
            locations = [locations]
        self.locations = [Path(location).expanduser().resolve() for location in locations]
        if not self.locations:
            raise ValueError("DataSource needs at least one folder or zip archive.")
        for location in self.locations:
            if not location.exists():
                raise FileNotFoundError(f"Dataset location {location} does not exist.")
            if location.is_file() and not zipfile.is_zipfile(location):
                raise ValueError(f"Dataset location {location} is a file but not a zip archive.")
        self._index: dict[str, int] | None = None
        self._archives: dict[int, zipfile.ZipFile] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archives": {}}

    @property
    def is_folder(self) -> bool:
        return all(location.is_dir() for location in self.locations)

    @property
    def files(self) -> list[str]:
        """All file paths, relative to their location, sorted."""
        return sorted(self._file_index())

    def _file_index(self) -> dict[str, int]:
        if self._index is None:
            index: dict[str, int] = {}
            for number, location in enumerate(self.locations):
                for relative in self._list(location):
                    index.setdefault(relative, number)
            self._index = index
        return self._index

    @staticmethod
    def _list(location: Path) -> Iterator[str]:
        if location.is_file():
            with zipfile.ZipFile(location) as archive:
                yield from (name for name in archive.namelist() if not name.endswith("/"))
            return
        for directory, _, names in os.walk(location):
            relative_dir = Path(directory).relative_to(location).as_posix()
            for name in names:
                yield name if relative_dir == "." else f"{relative_dir}/{name}"

    def describe(self, relative: str) -> str:
        """Where a file is, for messages: an absolute path, or `archive.zip:member`."""
        location = self.locations[self._file_index().get(relative, 0)]
        return f"{location}:{relative}" if location.is_file() else str(location / relative)

    def local_path(self, relative: str) -> str | None:
        """The absolute path of a file in a folder location, `None` for archive members."""
        location = self.locations[self._file_index()[relative]]
        return None if location.is_file() else str(location / relative)

    def read_bytes(self, relative: str) -> bytes:
        number = self._file_index()[relative]
        location = self.locations[number]
        if location.is_dir():
            return (location / relative).read_bytes()
        if number not in self._archives:
            self._archives[number] = zipfile.ZipFile(location)
        return self._archives[number].read(relative)


# ----------------------------------------------------------------------------------------------------------------
# Pairs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLabelPair:
    """One example: the relative paths of its image and label files, and the name the stored label gets."""

    image: str
    label: str
    stored_label_name: str


def format_file_list(names: Sequence[str]) -> str:
    listed = ", ".join(names[:_MAX_LISTED_FILES])
    more = len(names) - _MAX_LISTED_FILES
    return listed + (f" and {more} more" if more > 0 else "")


def pair_files(
    source: DataSource,
    images: dict[Any, str],
    labels: dict[Any, str],
    *,
    what: str,
    expected_label: Callable[[str], str],
    rename_label: Callable[[str], str] = lambda name: name,
) -> list[ImageLabelPair]:
    """Match image and label files by key; any image without label or label without image is an error naming them.

    `expected_label(image)` says in the error which label file was looked for; `rename_label(label)` gives the
    stored label's name (e.g. `_labelIds.png` -> `_labelTrainIds.png` once converted).
    """
    if not images:
        raise ValueError(f"{what}: no image files found.")
    unlabeled = [
        source.describe(images[key]) + f" (expected {expected_label(images[key])})"
        for key in images
        if key not in labels
    ]
    if unlabeled:
        raise ValueError(f"{what}: {len(unlabeled)} image(s) without a label file: {format_file_list(unlabeled)}.")
    orphans = [source.describe(labels[key]) for key in labels if key not in images]
    if orphans:
        raise ValueError(f"{what}: {len(orphans)} label file(s) without an image: {format_file_list(orphans)}.")
    return [ImageLabelPair(images[key], labels[key], rename_label(labels[key])) for key in sorted(images)]


def index_files(source: DataSource, pattern: re.Pattern, key: Callable[[re.Match], Any], what: str) -> dict[Any, str]:
    """`{key(match): path}` for the source files matching `pattern` (skipped where `key` returns `None`); two files
    with one key are an error."""
    found: dict[Any, str] = {}
    for relative in source.files:
        match = pattern.match(relative)
        file_key = None if match is None else key(match)
        if file_key is None:
            continue
        if file_key in found:
            raise ValueError(
                f"{what}: two files for one example: {source.describe(found[file_key])} and "
                f"{source.describe(relative)}."
            )
        found[file_key] = relative
    return found


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking one pair
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelConversion:
    """How a dataset's label files become stored labels.

    `valid_values`: bool mask over 0..255 of the values a label file may hold (checked when decoded).
    `lookup`: uint8 table over 0..255 applied to the decoded values (e.g. Cityscapes label id -> train id), or `None`
    to keep the file's bytes as they are. `policy`: the mark of the stored labels.
    """

    policy: LabelPolicy
    valid_values: np.ndarray
    lookup: np.ndarray | None = None
    value_names: dict[int, str] = field(default_factory=dict)

    def describe_values(self, values: Iterable[int]) -> str:
        return ", ".join(f"{v} ({self.value_names[v]})" if v in self.value_names else str(v) for v in values)


@dataclass
class PairRecord:
    """One checked example: `datasets.Image` storage dicts, the size, and the stored labels' histogram (if decoded)."""

    image: dict
    label: dict
    size: tuple[int, int]
    histogram: np.ndarray | None


def _open_image(data: bytes | str, name: str, decode: bool) -> PIL.Image.Image:
    """`open_image`, with its errors as one `ValueError` that names the dataset file."""
    try:
        return open_image(data, name, decode=decode)
    except ImageFileError as error:
        raise ValueError(f"Cannot read {name}: {error.reason}") from error


def read_label(
    data: bytes, name: str, conversion: LabelConversion, decode: bool
) -> tuple[bytes, tuple[int, int], np.ndarray | None]:
    """(marked stored PNG bytes, (height, width), histogram over 0..255 of the stored values or `None`)."""
    image = _open_image(data, name, decode=decode or conversion.lookup is not None)
    size = (image.height, image.width)
    if not (decode or conversion.lookup is not None):
        if data[:8] != PNG_SIGNATURE:
            raise ValueError(f"Label file {name} is a {image.format} file; label maps must be PNG (lossless).")
        return mark_label_png(data, conversion.policy), size, None
    if image.mode not in ("L", "P"):
        raise ValueError(f"Label file {name} has mode {image.mode}; expected a single-channel 8-bit map (L or P).")
    values = np.asarray(image, dtype=np.uint8)
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    invalid = [int(v) for v in present if not conversion.valid_values[v]]
    if invalid:
        raise ValueError(
            f"Label file {name} holds values {conversion.describe_values(invalid)} outside the dataset's label set "
            f"({conversion.policy.description})."
        )
    if conversion.lookup is not None:
        values = conversion.lookup[values]
        stored = encode_label_png(values, conversion.policy)
    else:
        if data[:8] != PNG_SIGNATURE:
            raise ValueError(f"Label file {name} is a {image.format} file; label maps must be PNG (lossless).")
        stored = mark_label_png(data, conversion.policy)
    return stored, size, np.bincount(values.ravel(), minlength=256)


def read_pair(
    source: DataSource, pair: ImageLabelPair, conversion: LabelConversion, *, decode: bool, embed_image: bool
) -> PairRecord:
    """Read and check one pair. `decode=False` reads headers only (sizes); `decode=True` decodes both files fully and
    checks the label values. `embed_image=False` stores a folder image by path (archive members are always embedded).
    """
    image_name = source.describe(pair.image)
    image_path = source.local_path(pair.image)
    if embed_image or image_path is None:
        image_bytes = source.read_bytes(pair.image)
        image = _open_image(image_bytes, image_name, decode)
        image_storage = {"bytes": image_bytes, "path": pair.image}
    else:
        image = _open_image(image_path, image_name, decode)
        image_storage = {"bytes": None, "path": image_path}
    if decode:
        try:
            image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot convert {image_name} (mode {image.mode}) to RGB: {error}") from error
    image_size = (image.height, image.width)
    image.close()
    label_name = source.describe(pair.label)
    label_bytes, label_size, histogram = read_label(source.read_bytes(pair.label), label_name, conversion, decode)
    if label_size != image_size:
        raise ValueError(
            f"Size mismatch: image {image_name} is {image_size[0]}x{image_size[1]} (HxW) but label {label_name} is "
            f"{label_size[0]}x{label_size[1]}."
        )
    return PairRecord(image_storage, {"bytes": label_bytes, "path": pair.stored_label_name}, image_size, histogram)


class _PairReader:
    """Picklable `read_pair` with fixed arguments, for `multiprocessing` pools."""

    def __init__(self, source: DataSource, conversion: LabelConversion, decode: bool, embed_image: bool):
        self.source, self.conversion, self.decode, self.embed_image = source, conversion, decode, embed_image

    def __call__(self, pair: ImageLabelPair) -> PairRecord:
        return read_pair(self.source, pair, self.conversion, decode=self.decode, embed_image=self.embed_image)


def iter_pair_records(
    source: DataSource,
    pairs: Sequence[ImageLabelPair],
    conversion: LabelConversion,
    *,
    decode: bool,
    embed_image: bool,
    num_proc: int = 1,
    desc: str = "",
    progress: bool = True,
) -> Iterator[PairRecord]:
    """`read_pair` over `pairs`, in order, on `num_proc` processes, with a tqdm progress bar."""
    reader = _PairReader(source, conversion, decode, embed_image)
    with tqdm(total=len(pairs), desc=desc, unit="img", disable=not progress) as bar:
        if num_proc <= 1 or len(pairs) < 2 * num_proc:
            for pair in pairs:
                yield reader(pair)
                bar.update()
            return
        import multiprocessing
        import sys

        # fork is fast and safe for this numpy/PIL-only work on Linux; elsewhere the platform default (spawn).
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with context.Pool(num_proc) as pool:
            for record in pool.imap(reader, pairs, chunksize=4):
                yield record
                bar.update()


def build_split(
    source: DataSource,
    pairs: Sequence[ImageLabelPair],
    conversion: LabelConversion,
    *,
    num_proc: int = 1,
    desc: str = "",
    progress: bool = True,
) -> Dataset:
    """A `Dataset` with `image` (folder files by path, archive members embedded) and `label` (marked PNG bytes).

    Reads headers only, except where the labels must be converted; sizes are checked for every pair.
    """
    images, labels = [], []
    for record in iter_pair_records(
        source, pairs, conversion, decode=False, embed_image=False, num_proc=num_proc, desc=desc, progress=progress
    ):
        images.append(record.image)
        labels.append(record.label)
    return Dataset.from_dict({"image": images, "label": labels}, features=LABEL_FEATURES)


__all__ = [
    "LABEL_FEATURES",
    "DataSource",
    "ImageLabelPair",
    "LabelConversion",
    "PairRecord",
    "build_split",
    "format_file_list",
    "index_files",
    "iter_pair_records",
    "pair_files",
    "read_label",
    "read_pair",
]
