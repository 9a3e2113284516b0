"""Any `datasets` dataset (an object, or a local dataset folder) as a Semantic FPN dataset: `image` and `label`
columns picked by name, checked, and cast to `datasets.Image()`.
"""

import os
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk


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


__all__ = ["load_image_label_dataset"]
