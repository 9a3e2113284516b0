"""`prepare` (official folders / zips -> checked Parquet DatasetDict) and the generic image/label loader."""

import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import Dataset, DatasetDict, Features, Image, Value, load_dataset

from fpn_seg.data import (
    ADE20K_RAW_POLICY,
    CITYSCAPES_TRAIN_ID_POLICY,
    label_policy_of,
    load_ade20k,
    load_cityscapes,
    load_image_label_dataset,
    load_prepared,
    prepare_ade20k,
    prepare_cityscapes,
)
from fpn_seg.data.prepare import main

EVALUATED_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def write_cityscapes(root: Path, split: str, count: int, size=(6, 9), seed=0) -> None:
    rng = np.random.default_rng(seed)
    for index in range(count):
        city = ("erfurt", "hanover")[index % 2]
        stem = f"{city}_{index:06d}_000019"
        for top, suffix, data in (
            ("leftImg8bit", "leftImg8bit", rng.integers(0, 256, (*size, 3), dtype=np.uint8)),
            ("gtFine", "gtFine_labelIds", rng.integers(0, 34, size).astype(np.uint8)),
        ):
            (root / top / split / city).mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(data).save(root / top / split / city / f"{stem}_{suffix}.png")


def write_ade20k(root: Path, split: str, count: int, seed=0) -> None:
    rng = np.random.default_rng(seed)
    for index in range(1, count + 1):
        height, width = 5 + index, 8
        stem = f"ADE_{'train' if split == 'training' else 'val'}_{index:08d}"
        for kind, suffix, data in (
            ("images", "jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
            ("annotations", "png", rng.integers(0, 151, (height, width)).astype(np.uint8)),
        ):
            folder = root / "ADEChallengeData2016" / kind / split
            folder.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(data).save(folder / f"{stem}.{suffix}")


def assert_same_pixels(a: Dataset, b: Dataset) -> None:
    assert a.num_rows == b.num_rows
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
        np.testing.assert_array_equal(np.asarray(x["label"]), np.asarray(y["label"]))


def test_cityscapes_round_trip_to_parquet(tmp_path):
    source, output = tmp_path / "cityscapes", tmp_path / "parquet"
    write_cityscapes(source, "train", 5)
    write_cityscapes(source, "val", 2, seed=1)
    summary = prepare_cityscapes(source, output, rows_per_shard=2, rows_per_group=1, progress=False)
    assert sorted(p.name for p in (output / "data").iterdir()) == [
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
        "validation-00000-of-00001.parquet",
    ]
    prepared = load_prepared(output, cache_dir=str(tmp_path / "cache"))
    loaded = load_cityscapes(source, progress=False)
    for split in ("train", "validation"):
        assert prepared[split].features == Features({"image": Image(), "label": Image()})
        assert_same_pixels(prepared[split], loaded[split])
    assert label_policy_of(prepared["train"][0]["label"]) == CITYSCAPES_TRAIN_ID_POLICY
    # The summary's histogram counts the stored train ids.
    stored = np.concatenate([np.asarray(example["label"]).ravel() for example in loaded["train"]])
    np.testing.assert_array_equal(summary.splits["train"].histogram, np.bincount(stored, minlength=256))
    assert summary.splits["train"].num_examples == 5 and summary.splits["train"].official_count == 2975
    written = json.loads((output / "summary.json").read_text())
    assert written["splits"]["validation"]["num_examples"] == 2
    assert written["splits"]["train"]["pixels"]["0"]["name"] == "road"
    # The Hub's layout: plain `load_dataset` on the folder finds the splits too.
    plain = load_dataset("parquet", data_dir=str(output), cache_dir=str(tmp_path / "cache2"))
    assert set(plain) == {"train", "validation"} and plain["train"].num_rows == 5


def test_ade20k_zip_round_trip_with_two_processes(tmp_path):
    source = tmp_path / "ade"
    write_ade20k(source, "training", 6)
    write_ade20k(source, "validation", 1, seed=1)
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted(source.rglob("*.*")):
            zipped.write(file, file.relative_to(source).as_posix())
    summary = prepare_ade20k(archive, tmp_path / "out", num_proc=2, progress=False)
    prepared = load_prepared(tmp_path / "out", cache_dir=str(tmp_path / "cache"))
    loaded = load_ade20k(source, progress=False)
    for split in ("train", "validation"):
        assert_same_pixels(prepared[split], loaded[split])
    assert label_policy_of(prepared["validation"][0]["label"]) == ADE20K_RAW_POLICY
    assert set(summary.splits["train"].sizes) == {(6, 8), (7, 8), (8, 8), (9, 8), (10, 8), (11, 8)}
    assert "(other: ignored after reduce_labels)" in summary.format()


def test_cli_prints_the_summary_and_reports_errors(tmp_path, capsys):
    write_cityscapes(tmp_path / "src", "train", 2)
    assert (
        main(["cityscapes", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--splits", "train", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "train" in printed and "Class histogram" in printed and "road" in printed
    # A second run refuses to overwrite without --overwrite: a usage error (2), in fpn-seg's one-line style.
    assert main(["cityscapes", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--splits", "train"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fpn-seg prepare: error: ") and "--overwrite" in error and error.count("\n") == 1


def test_a_broken_file_names_it_and_writes_nothing(tmp_path):
    write_cityscapes(tmp_path / "src", "train", 3)
    label = tmp_path / "src/gtFine/train/hanover/hanover_000001_000019_gtFine_labelIds.png"
    label.write_bytes(label.read_bytes()[:-30])  # valid header, truncated pixel data: only a full decode sees it
    with pytest.raises(ValueError, match=r"Cannot read .*hanover_000001_000019_gtFine_labelIds\.png"):
        prepare_cityscapes(tmp_path / "src", tmp_path / "out", splits=["train"], progress=False)
    assert not (tmp_path / "out" / "data").exists() and not (tmp_path / "out" / ".prepare-tmp").exists()


def test_label_values_outside_the_label_set_are_named(tmp_path):
    write_ade20k(tmp_path / "src", "training", 2)
    bad = np.full((7, 8), 3, np.uint8)
    bad[1, 1] = 200
    PIL.Image.fromarray(bad).save(tmp_path / "src/ADEChallengeData2016/annotations/training/ADE_train_00000002.png")
    with pytest.raises(ValueError, match=r"ADE_train_00000002\.png holds values 200 outside"):
        prepare_ade20k(tmp_path / "src", tmp_path / "out", splits=["train"], progress=False)


def test_generic_loader_renames_columns_and_casts_paths(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(2):
        image, mask = tmp_path / f"img{index}.jpg", tmp_path / f"mask{index}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(image)
        PIL.Image.fromarray(np.full((5, 6), index, np.uint8)).save(mask)
        paths.append((str(image), str(mask)))
    dataset = Dataset.from_dict(
        {"pixels": [p[0] for p in paths], "mask": [p[1] for p in paths], "id": [0, 1]},
        features=Features({"pixels": Value("string"), "mask": Image(), "id": Value("int64")}),
    )
    loaded = load_image_label_dataset(dataset, image_column="pixels", label_column="mask")
    assert isinstance(loaded, DatasetDict) and list(loaded) == ["train"]
    assert loaded["train"].column_names == ["image", "label"]
    assert loaded["train"].features["image"] == Image()
    np.testing.assert_array_equal(np.asarray(loaded["train"][1]["label"]), np.full((5, 6), 1))
    kept = load_image_label_dataset(dataset, "pixels", "mask", keep_other_columns=True)
    assert sorted(kept["train"].column_names) == ["id", "image", "label"]
    # From a `save_to_disk` folder, a DatasetDict.
    DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "saved"))
    from_disk = load_image_label_dataset(tmp_path / "saved", "pixels", "mask")
    assert list(from_disk) == ["validation"] and from_disk["validation"].num_rows == 2


def test_generic_loader_names_missing_columns(tmp_path):
    dataset = Dataset.from_dict({"img": ["a.png"], "seg": ["b.png"]})
    with pytest.raises(ValueError, match=r"no column\(s\) \['image', 'label'\].*available columns: \['img', 'seg'\]"):
        load_image_label_dataset(dataset)
    with pytest.raises(ValueError, match=r"no column\(s\) \['mask'\]"):
        load_image_label_dataset(dataset, image_column="img", label_column="mask")
    with pytest.raises(ValueError, match=r"column 'label' .*expected a `datasets.Image\(\)` feature"):
        load_image_label_dataset(Dataset.from_dict({"image": ["a.png"], "label": [3]}))
