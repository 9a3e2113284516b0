"""Cityscapes loader: official layout on disk (real PNG files), label table, labelIds -> trainIds, broken pairs."""

import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from fpn_seg.data import load_cityscapes
from fpn_seg.data.cityscapes import CITYSCAPES_LABELS, CITYSCAPES_TRAIN_ID_POLICY, cityscapes_label_map
from fpn_seg.data.label_marks import label_policy_of
from fpn_seg.label_sets import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

# The 19 evaluated label ids, in train-id order (from the Cityscapes benchmark definition).
EVALUATED_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Independent reference mapping for the tests."""
    out = np.full_like(label_ids, 255)
    for train_id, label_id in enumerate(EVALUATED_IDS):
        out[label_ids == label_id] = train_id
    return out


def write_cityscapes(root: Path, split: str, examples: dict[str, tuple[int, int]], kinds=("labelIds",), seed=0):
    """Write `{"<city>/<stem>": (h, w)}` images and label files; returns {key: (image, {kind: label array})}."""
    rng = np.random.default_rng(seed)
    written = {}
    for key, (height, width) in examples.items():
        city, stem = key.split("/")
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        labels = {}
        for kind in kinds:
            high = 34 if kind == "labelIds" else 19
            values = rng.integers(0, high, (height, width)).astype(np.uint8)
            if kind == "labelTrainIds":
                values[rng.uniform(size=values.shape) < 0.2] = 255
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(values).save(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png")
            labels[kind] = values
        written[key] = (image, labels)
    return written


EXAMPLES = {
    "aachen/aachen_000000_000019": (6, 10),
    "aachen/aachen_000001_000019": (6, 10),
    "bonn/bonn_000000_000019": (8, 5),
}


def test_label_table_matches_cityscapesscripts_definition():
    ids = [label.id for label in CITYSCAPES_LABELS]
    assert ids == list(range(34)) + [-1]  # 34 label ids + license plate
    assert CITYSCAPES_LABELS[-1].name == "license plate" and CITYSCAPES_LABELS[-1].train_id == -1
    evaluated = [label for label in CITYSCAPES_LABELS if 0 <= label.train_id < 255]
    assert [label.id for label in evaluated] == EVALUATED_IDS
    assert [label.train_id for label in evaluated] == list(range(19))
    assert tuple(label.name for label in evaluated) == CITYSCAPES_CLASSES
    assert tuple(label.color for label in evaluated) == CITYSCAPES_PALETTE
    assert all(label.train_id == 255 for label in CITYSCAPES_LABELS if label.id >= 0 and label.id not in EVALUATED_IDS)
    assert cityscapes_label_map() == {label_id: index for index, label_id in enumerate(EVALUATED_IDS)}


def test_label_ids_are_stored_as_train_ids(tmp_path):
    written = write_cityscapes(tmp_path, "train", EXAMPLES)
    val = write_cityscapes(tmp_path, "val", {"lindau/lindau_000000_000019": (5, 7)}, seed=1)
    dataset = load_cityscapes(tmp_path, progress=False)
    assert set(dataset) == {"train", "validation"}
    assert dataset["train"].num_rows == 3 and dataset["validation"].num_rows == 1
    for index, key in enumerate(sorted(EXAMPLES)):
        example = dataset["train"][index]
        image, labels = written[key]
        np.testing.assert_array_equal(np.asarray(example["image"]), image)
        np.testing.assert_array_equal(np.asarray(example["label"]), to_train_ids(labels["labelIds"]))
        assert label_policy_of(example["label"]) == CITYSCAPES_TRAIN_ID_POLICY
    np.testing.assert_array_equal(
        np.asarray(dataset["validation"][0]["label"]), to_train_ids(val["lindau/lindau_000000_000019"][1]["labelIds"])
    )


def test_train_id_files_are_kept_and_preferred_by_auto(tmp_path):
    written = write_cityscapes(tmp_path, "train", EXAMPLES, kinds=("labelIds", "labelTrainIds"))
    auto = load_cityscapes(tmp_path, splits=["train"], progress=False)["train"]
    from_ids = load_cityscapes(tmp_path, splits=["train"], label_type="labelIds", progress=False)["train"]
    for index, key in enumerate(sorted(EXAMPLES)):
        labels = written[key][1]
        np.testing.assert_array_equal(np.asarray(auto[index]["label"]), labels["labelTrainIds"])
        np.testing.assert_array_equal(np.asarray(from_ids[index]["label"]), to_train_ids(labels["labelIds"]))
        assert label_policy_of(auto[index]["label"]) == CITYSCAPES_TRAIN_ID_POLICY


def test_official_zips_load_like_the_folder(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "val", EXAMPLES)
    archives = []
    for top in ("leftImg8bit", "gtFine"):
        archive = tmp_path / f"{top}_trainvaltest.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in sorted((root / top).rglob("*.png")):
                zipped.write(file, file.relative_to(root).as_posix())
        archives.append(archive)
    from_zips = load_cityscapes(archives, splits=["validation"], progress=False)["validation"]
    from_folder = load_cityscapes(root, splits=["val"], progress=False)["validation"]
    assert from_zips.num_rows == from_folder.num_rows == 3
    for a, b in zip(from_zips, from_folder):
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_image_without_label_is_named(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    missing = tmp_path / "gtFine/train/bonn/bonn_000000_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(ValueError, match=r"without a label file.*bonn_000000_000019_leftImg8bit\.png"):
        load_cityscapes(tmp_path, splits=["train"], progress=False)


def test_label_without_image_is_named(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    (tmp_path / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(ValueError, match=r"without an image.*aachen_000001_000019_gtFine_labelIds\.png"):
        load_cityscapes(tmp_path, splits=["train"], progress=False)


def test_size_mismatch_names_both_files(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    label = tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    PIL.Image.fromarray(np.zeros((6, 11), np.uint8)).save(label)
    with pytest.raises(
        ValueError, match=r"Size mismatch.*aachen_000000_000019_leftImg8bit\.png.*6x10.*labelIds\.png.*6x11"
    ):
        load_cityscapes(tmp_path, splits=["train"], progress=False)


def test_unreadable_image_is_named(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    broken = tmp_path / "leftImg8bit/train/bonn/bonn_000000_000019_leftImg8bit.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"Cannot read .*bonn_000000_000019_leftImg8bit\.png"):
        load_cityscapes(tmp_path, splits=["train"], progress=False)


def test_unknown_label_id_is_named(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    label = tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    values = np.full((6, 10), 7, np.uint8)
    values[0, 0] = 40
    PIL.Image.fromarray(values).save(label)
    with pytest.raises(ValueError, match=r"aachen_000001_000019_gtFine_labelIds\.png holds values 40"):
        load_cityscapes(tmp_path, splits=["train"], label_type="labelIds", progress=False)


def test_empty_or_unknown_split_is_an_error(tmp_path):
    write_cityscapes(tmp_path, "train", EXAMPLES)
    with pytest.raises(ValueError, match=r"split 'val'.*no images found under leftImg8bit/val"):
        load_cityscapes(tmp_path, splits=["val"], progress=False)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_cityscapes(tmp_path, splits=["dev"], progress=False)
    with pytest.raises(FileNotFoundError):
        load_cityscapes(tmp_path / "nowhere", progress=False)
