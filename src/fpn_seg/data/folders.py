"""Reading image/label pairs from folders or zip archives, the label-policy mark, and generic datasets.

The dataset-specific loaders (`cityscapes.py`, `ade20k.py`) and the `prepare` command share this machinery:

- [`DataSource`]: the files of a dataset, in folders and/or zip archives, addressed by `/`-separated relative paths.
- [`ImageLabelPair`] + [`pair_files`]: image and label files matched by key; unmatched files are a clear error.
- [`LabelConversion`] + [`read_pair`]: reads one pair, checks it (readable, same size, label values) and returns the
  `datasets.Image` storage of both files, the label converted (e.g. Cityscapes label ids -> train ids) and **marked**.
- [`LabelPolicy`]: the mark. Every label PNG written by the loaders carries a PNG text chunk
  (`fpn_seg.label_policy`) saying which label policy turns its values into training ids (e.g. raw ADE20K annotations
  need `reduce_labels=True`; Cityscapes train ids need nothing). The mark travels with the PNG bytes (through
  `save_to_disk`, Parquet, `select`, `map`...), and the training/evaluation transforms compare it with the
  processor's policy ([`check_label_policy`]): a policy applied twice, or not at all, is an error instead of silently
  wrong labels. Adding the mark does not re-encode pixels (the chunk is spliced in after the PNG header).
- [`load_image_label_dataset`]: any `datasets` dataset (object or local path) with configurable column names.
"""

import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from datasets import Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk
from tqdm.auto import tqdm

LABEL_POLICY_KEY = "fpn_seg.label_policy"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL_FEATURES = Features({"image": Image(), "label": Image()})
_MAX_LISTED_FILES = 5


# ----------------------------------------------------------------------------------------------------------------
# Label policy mark
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelPolicy:
    """The label policy that turns stored label values into training ids (what the processor must apply).

    Fields mirror `SemanticFPNConfig` / `SemanticFPNImageProcessor`: `reduce_labels` (0 -> ignore, `v` -> `v - 1`),
    `label_map` (raw value -> training id) and `ignore_index`. `description` is for humans (error messages).
    """

    description: str
    reduce_labels: bool = False
    label_map: dict[int, int] | None = None
    ignore_index: int = 255

    def to_json(self) -> str:
        label_map = None if not self.label_map else {str(k): int(v) for k, v in sorted(self.label_map.items())}
        fields = {
            "description": self.description,
            "reduce_labels": self.reduce_labels,
            "label_map": label_map,
            "ignore_index": self.ignore_index,
        }
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LabelPolicy":
        fields = json.loads(text)
        label_map = fields.get("label_map")
        return cls(
            description=str(fields.get("description", "")),
            reduce_labels=bool(fields.get("reduce_labels", False)),
            label_map={int(k): int(v) for k, v in label_map.items()} if label_map else None,
            ignore_index=int(fields.get("ignore_index", 255)),
        )

    def mismatches(self, holder: Any) -> list[str]:
        """Differences between this policy and a processor's (`do_reduce_labels`) or a config's (`reduce_labels`)."""
        reduce_labels = getattr(holder, "do_reduce_labels", getattr(holder, "reduce_labels", False))
        label_map = getattr(holder, "label_map", None) or None
        if label_map is not None:
            label_map = {int(k): int(v) for k, v in label_map.items()}
        ignore_index = getattr(holder, "ignore_index", 255)
        problems = []
        if bool(reduce_labels) != self.reduce_labels:
            problems.append(
                f"reduce_labels: the labels need {self.reduce_labels}, the {_kind(holder)} has {reduce_labels}"
            )
        if label_map != (self.label_map or None):
            problems.append(
                f"label_map: the labels need {_short_map(self.label_map)}, "
                f"the {_kind(holder)} has {_short_map(label_map)}"
            )
        if ignore_index != self.ignore_index:
            problems.append(
                f"ignore_index: the labels use {self.ignore_index}, the {_kind(holder)} has {ignore_index}"
            )
        return problems


def _kind(holder: Any) -> str:
    return "processor" if hasattr(holder, "do_reduce_labels") else type(holder).__name__


def _short_map(label_map: dict[int, int] | None) -> str:
    if not label_map:
        return "no label_map"
    items = sorted(label_map.items())
    text = ", ".join(f"{k}->{v}" for k, v in items[:6])
    return f"a label_map {{{text}{', ...' if len(items) > 6 else ''}}}"


def _png_text_chunk(key: str, value: str) -> bytes:
    payload = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    crc = zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", crc)


def mark_label_png(data: bytes, policy: LabelPolicy) -> bytes:
    """PNG bytes with the label-policy text chunk inserted after the header (pixels untouched)."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise ValueError("mark_label_png expects PNG bytes starting with an IHDR chunk.")
    header_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return data[:header_end] + _png_text_chunk(LABEL_POLICY_KEY, policy.to_json()) + data[header_end:]


def encode_label_png(label: np.ndarray, policy: LabelPolicy | None = None) -> bytes:
    """A (H, W) uint8 label map as PNG bytes (mode "L"), marked with `policy` when given."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"encode_label_png expects a (H, W) uint8 array, got {label.dtype} {tuple(label.shape)}.")
    buffer = io.BytesIO()
    PIL.Image.fromarray(label, mode="L").save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    return mark_label_png(data, policy) if policy is not None else data


def label_policy_of(label: PIL.Image.Image) -> LabelPolicy | None:
    """The policy a label image was marked with by the `fpn_seg.data` loaders, or `None` for unmarked labels."""
    text = getattr(label, "info", {}).get(LABEL_POLICY_KEY)
    return LabelPolicy.from_json(text) if text else None


def check_label_policy(label: Any, holder: Any) -> None:
    """Raise if `label` (a PIL image from a `fpn_seg.data` loader) is marked with a policy other than `holder`'s.

    `holder` is a `SemanticFPNImageProcessor` or a `SemanticFPNConfig`. Unmarked labels (plain arrays, datasets not
    made by `fpn_seg.data`) pass: their policy is the caller's responsibility.
    """
    policy = label_policy_of(label) if isinstance(label, PIL.Image.Image) else None
    if policy is None:
        return
    problems = policy.mismatches(holder)
    if problems:
        raise ValueError(
            f"The label maps hold {policy.description}, but the {_kind(holder)}'s label policy does not match "
            f"({'; '.join(problems)}). Applying it would train on wrong labels; build the processor from a config "
            "with the policy the labels need (e.g. `SemanticFPNImageProcessor.from_model_config(config)` with "
            "`config.reduce_labels` / `config.label_map` set accordingly)."
        )


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
    try:
        image = PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        if decode:
            image.load()
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot read {name}: {type(error).__name__}: {error}") from error
    return image


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


# ----------------------------------------------------------------------------------------------------------------
# Generic datasets
# ----------------------------------------------------------------------------------------------------------------


def _load_path(path: Path) -> Dataset | DatasetDict:
    if not path.exists():
        raise FileNotFoundError(f"load_image_label_dataset: {path} does not exist.")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return load_from_disk(str(path))
    if path.is_file() and path.suffix == ".parquet":
        return load_dataset("parquet", data_files={"train": str(path)})
    return load_dataset(str(path))


def _select_columns(
    dataset: Dataset, image_column: str, label_column: str, keep_other_columns: bool, split: str
) -> Dataset:
    if dataset.num_rows == 0:
        raise ValueError(
            f"load_image_label_dataset: split {split!r} is empty (0 examples, columns {dataset.column_names}); "
            "check the data files, or drop the split."
        )
    missing = [column for column in (image_column, label_column) if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"load_image_label_dataset: split {split!r} has no column(s) {missing} "
            f"(image_column={image_column!r}, label_column={label_column!r}); available columns: "
            f"{dataset.column_names}."
        )
    if not keep_other_columns:
        dataset = dataset.select_columns([image_column, label_column])
    clashes = [c for c in ("image", "label") if c in dataset.column_names and c not in (image_column, label_column)]
    if clashes:
        dataset = dataset.remove_columns(clashes)
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    for column in ("image", "label"):
        feature = dataset.features[column]
        if isinstance(feature, Image):
            continue
        if getattr(feature, "dtype", None) == "string":
            dataset = dataset.cast_column(column, Image())  # file paths
            continue
        raise ValueError(
            f"load_image_label_dataset: column {column!r} of split {split!r} is {feature}; expected a "
            "`datasets.Image()` feature or file paths (strings)."
        )
    return dataset


def load_image_label_dataset(
    dataset_or_path: Dataset | DatasetDict | str | os.PathLike,
    image_column: str = "image",
    label_column: str = "label",
    *,
    split: str = "train",
    keep_other_columns: bool = False,
) -> DatasetDict:
    """Any `datasets` dataset with an image and a label-map column, as a `DatasetDict` with `image` / `label` columns.

    Args:
        dataset_or_path: a `Dataset`, a `DatasetDict`, or a local path: a `save_to_disk` folder, a `.parquet` file, or
            a folder that `datasets.load_dataset` reads (Parquet files, e.g. the output of `prepare`).
        image_column, label_column: the columns to rename to `image` and `label`. Columns holding file paths are cast
            to `datasets.Image()`.
        split: the split name a single `Dataset` gets.
        keep_other_columns: keep the remaining columns (dropped by default).

    The labels are taken as they are: the processor's label policy (`reduce_labels`, `label_map`) is what turns them
    into training ids, so it must fit the data (labels from the `fpn_seg.data` loaders carry a mark that the
    transforms check; other labels cannot be checked).
    """
    if isinstance(dataset_or_path, (str, os.PathLike)):
        dataset_or_path = _load_path(Path(dataset_or_path))
    if isinstance(dataset_or_path, Dataset):
        dataset_or_path = DatasetDict({split: dataset_or_path})
    if not isinstance(dataset_or_path, DatasetDict):
        raise TypeError(
            "load_image_label_dataset expects a datasets.Dataset, a datasets.DatasetDict or a local path, got "
            f"{type(dataset_or_path).__name__}."
        )
    return DatasetDict(
        {
            name: _select_columns(dataset, image_column, label_column, keep_other_columns, name)
            for name, dataset in dataset_or_path.items()
        }
    )


__all__ = [
    "LABEL_FEATURES",
    "LABEL_POLICY_KEY",
    "DataSource",
    "ImageLabelPair",
    "LabelConversion",
    "LabelPolicy",
    "PairRecord",
    "build_split",
    "check_label_policy",
    "encode_label_png",
    "format_file_list",
    "index_files",
    "iter_pair_records",
    "label_policy_of",
    "load_image_label_dataset",
    "mark_label_png",
    "pair_files",
    "read_label",
    "read_pair",
]
