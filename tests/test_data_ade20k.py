"""ADE20K loader: official layout (real JPEG/PNG files), raw annotations + reduce_zero_label applied exactly once."""

import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from fpn_seg.data import ADE20K_RAW_POLICY, EvalTransform, TrainTransform, label_policy_of, load_ade20k
from fpn_seg.image_processing_semantic_fpn import SemanticFPNImageProcessor
from fpn_seg.presets import preset_processor


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label, written independently: 0 -> 255, v -> v - 1."""
    out = raw.astype(np.int64) - 1
    out[raw == 0] = 255
    return out


def write_ade20k(root: Path, split: str, sizes: list[tuple[int, int]], seed: int = 0) -> dict[str, np.ndarray]:
    """`ADEChallengeData2016/{images,annotations}/<split>/` with JPEG images and PNG annotations (0..150)."""
    rng = np.random.default_rng(seed)
    prefix = "ADE_train" if split == "training" else "ADE_val"
    (root / "ADEChallengeData2016/images" / split).mkdir(parents=True, exist_ok=True)
    (root / "ADEChallengeData2016/annotations" / split).mkdir(parents=True, exist_ok=True)
    annotations = {}
    for index, (height, width) in enumerate(sizes, start=1):
        stem = f"{prefix}_{index:08d}"
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        PIL.Image.fromarray(image).save(root / "ADEChallengeData2016/images" / split / f"{stem}.jpg", quality=90)
        raw = rng.integers(0, 151, (height, width)).astype(np.uint8)
        raw[: height // 3] = 0  # "other"
        PIL.Image.fromarray(raw).save(root / "ADEChallengeData2016/annotations" / split / f"{stem}.png")
        annotations[stem] = raw
    return annotations


def test_raw_annotations_are_stored_and_marked(tmp_path):
    train = write_ade20k(tmp_path, "training", [(9, 12), (7, 7)])
    val = write_ade20k(tmp_path, "validation", [(10, 6)], seed=1)
    dataset = load_ade20k(tmp_path, progress=False)
    assert set(dataset) == {"train", "validation"}
    for index, stem in enumerate(sorted(train)):
        label = dataset["train"][index]["label"]
        np.testing.assert_array_equal(np.asarray(label), train[stem])
        assert label_policy_of(label) == ADE20K_RAW_POLICY
        assert dataset["train"][index]["image"].size == label.size
    np.testing.assert_array_equal(np.asarray(dataset["validation"][0]["label"]), val["ADE_val_00000001"])


def test_reduce_zero_label_is_applied_exactly_once(tmp_path):
    raw = write_ade20k(tmp_path, "validation", [(9, 12)])["ADE_val_00000001"]
    dataset = load_ade20k(tmp_path, splits=["validation"], progress=False)["validation"]
    processor = preset_processor("fpn_r50_512x512_160k_ade20k", scale=(12, 9))
    labels = dataset.with_transform(EvalTransform(processor))[0]["labels"]
    np.testing.assert_array_equal(labels.numpy(), reduce_zero_label(raw))
    train = TrainTransform(processor, crop_size=(9, 12), scale=(12, 9), ratio_range=(1, 1), flip_prob=0, seed=0)
    np.testing.assert_array_equal(dataset.with_transform(train)[0]["labels"].numpy(), reduce_zero_label(raw))


@pytest.mark.parametrize("transform", ["train", "eval"])
def test_a_processor_that_would_not_reduce_is_refused(tmp_path, transform):
    write_ade20k(tmp_path, "validation", [(9, 12)])
    dataset = load_ade20k(tmp_path, splits=["validation"], progress=False)["validation"]
    processor = SemanticFPNImageProcessor(scale=(12, 9))  # do_reduce_labels=False: 0 = "other" would be class 0
    make = {"train": lambda: TrainTransform(processor, crop_size=(8, 8)), "eval": lambda: EvalTransform(processor)}
    with pytest.raises(
        ValueError, match=r"raw ADE20K annotations.*reduce_labels: the labels need True, the processor has False"
    ):
        dataset.with_transform(make[transform]())[0]


def test_root_may_be_the_challenge_folder_or_the_zip(tmp_path):
    write_ade20k(tmp_path / "data", "training", [(6, 8), (6, 8)])
    archive = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in sorted((tmp_path / "data").rglob("*.*")):
            zipped.write(file, file.relative_to(tmp_path / "data").as_posix())
    from_parent = load_ade20k(tmp_path / "data", splits=["train"], progress=False)["train"]
    from_folder = load_ade20k(tmp_path / "data/ADEChallengeData2016", splits=["training"], progress=False)["train"]
    from_zip = load_ade20k(archive, splits=["train"], progress=False)["train"]
    for a, b, c in zip(from_parent, from_folder, from_zip):
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(c["label"]))


def test_broken_pairs_name_the_files(tmp_path):
    write_ade20k(tmp_path, "training", [(6, 8), (6, 8), (5, 5)])
    annotations = tmp_path / "ADEChallengeData2016/annotations/training"
    (annotations / "ADE_train_00000002.png").unlink()
    with pytest.raises(
        ValueError,
        match=r"without a label file.*ADE_train_00000002\.jpg.*annotations/training/ADE_train_00000002\.png",
    ):
        load_ade20k(tmp_path, splits=["train"], progress=False)
    PIL.Image.fromarray(np.zeros((6, 9), np.uint8)).save(annotations / "ADE_train_00000002.png")
    with pytest.raises(ValueError, match=r"Size mismatch.*ADE_train_00000002\.jpg.*ADE_train_00000002\.png"):
        load_ade20k(tmp_path, splits=["train"], progress=False)
    PIL.Image.fromarray(np.zeros((6, 8), np.uint8)).save(annotations / "ADE_train_00000002.png")
    PIL.Image.fromarray(np.zeros((5, 5), np.uint8)).save(annotations / "ADE_train_00000004.png")
    with pytest.raises(ValueError, match=r"without an image.*ADE_train_00000004\.png"):
        load_ade20k(tmp_path, splits=["train"], progress=False)
    (annotations / "ADE_train_00000004.png").unlink()
    (annotations / "ADE_train_00000003.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ValueError, match=r"Cannot read .*ADE_train_00000003\.png"):
        load_ade20k(tmp_path, splits=["train"], progress=False)
    with pytest.raises(ValueError, match=r"split 'validation'.*no images found"):
        load_ade20k(tmp_path, splits=["validation"], progress=False)


def test_policy_mark_survives_selection_and_saving(tmp_path):
    written = write_ade20k(tmp_path / "raw", "training", [(6, 8), (7, 5)])
    dataset = load_ade20k(tmp_path / "raw", splits=["train"], progress=False)["train"]
    dataset.select([1]).save_to_disk(str(tmp_path / "saved"))
    from datasets import load_from_disk

    reloaded = load_from_disk(str(tmp_path / "saved"))
    assert label_policy_of(reloaded[0]["label"]) == ADE20K_RAW_POLICY
    np.testing.assert_array_equal(np.asarray(reloaded[0]["label"]), written["ADE_train_00000002"])
