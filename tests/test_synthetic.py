"""Synthetic street scenes: Cityscapes layout with label ids, loadable by the real loader, deterministic, reusable."""

import numpy as np
import PIL.Image
import pytest

from fpn_seg.data import generate_street_scenes, load_cityscapes, render_street_scene
from fpn_seg.data.synthetic import SYNTHETIC_LABEL_IDS, main


def test_layout_and_the_label_id_path(tmp_path):
    generate_street_scenes(tmp_path, num_train=4, num_val=2, size=(48, 96), seed=0)
    images = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "leftImg8bit").rglob("*.png"))
    labels = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "gtFine").rglob("*.png"))
    assert images[:2] == [
        "leftImg8bit/train/ashford/ashford_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/ashford/ashford_000002_000019_leftImg8bit.png",
    ]
    assert len(images) == 6 and all(name.endswith("_leftImg8bit.png") for name in images)
    assert labels == sorted(
        name.replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit.png", "_gtFine_labelIds.png") for name in images
    )
    raw = np.asarray(PIL.Image.open(tmp_path / labels[0]))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= set(SYNTHETIC_LABEL_IDS)
    dataset = load_cityscapes(tmp_path, progress=False)
    assert dataset["train"].num_rows == 4 and dataset["validation"].num_rows == 2
    assert dataset["train"][0]["image"].size == (96, 48)
    lookup = {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 22: 9, 23: 10, 24: 11, 26: 13}
    expected = np.vectorize(lambda v: lookup.get(int(v), 255))(raw)
    np.testing.assert_array_equal(np.asarray(dataset["train"][0]["label"]), expected)


def test_scenes_hold_the_street_classes_and_some_unlabelled_pixels():
    train_ids = {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 22: 9, 23: 10, 24: 11, 26: 13}
    seen, unlabelled = set(), 0
    for index in range(16):
        image, label_ids = render_street_scene(np.random.default_rng([0, 0, index]), (64, 128))
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8 and label_ids.shape == (64, 128)
        seen |= {train_ids[v] for v in np.unique(label_ids) if v in train_ids}
        unlabelled += int(np.isin(label_ids, (0, 1, 4)).sum())
        # Textured, not flat colours: road pixels vary.
        assert image[label_ids == 7].std() > 3
    assert seen == {0, 1, 2, 5, 8, 9, 10, 11, 13}
    assert unlabelled > 0


def test_deterministic_per_seed_and_index(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_street_scenes(a, num_train=3, num_val=1, size=(32, 64), seed=7)
    generate_street_scenes(b, num_train=5, num_val=1, size=(32, 64), seed=7)
    generate_street_scenes(c, num_train=3, num_val=1, size=(32, 64), seed=8)
    for path in sorted(a.rglob("*.png")):
        relative = path.relative_to(a)
        assert path.read_bytes() == (b / relative).read_bytes()  # more images keep the first ones
    name = "leftImg8bit/train/ashford/ashford_000000_000019_leftImg8bit.png"
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_second_call_reuses_and_other_parameters_need_overwrite(tmp_path):
    generate_street_scenes(tmp_path, num_train=2, num_val=1, size=(32, 64))
    image = tmp_path / "leftImg8bit/train/brightwater/brightwater_000001_000019_leftImg8bit.png"
    stamp = image.stat().st_mtime_ns
    generate_street_scenes(tmp_path, num_train=2, num_val=1, size=(32, 64))
    assert image.stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_street_scenes(tmp_path, num_train=1, num_val=1, size=(32, 64))
    generate_street_scenes(tmp_path, num_train=1, num_val=1, size=(32, 64), overwrite=True)
    assert not image.exists() and len(list((tmp_path / "leftImg8bit").rglob("*.png"))) == 2


def test_an_interrupted_generation_is_done_again(tmp_path, monkeypatch):
    """Ctrl-C half-way (here: an error on the third scene) leaves a dataset marked unfinished; the next call, as a
    second `make demo`, generates it again instead of refusing the folder."""
    import fpn_seg.data.synthetic as synthetic

    render, calls = synthetic.render_street_scene, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_street_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_street_scenes(tmp_path, num_train=4, num_val=1, size=(32, 64))
    monkeypatch.undo()
    root = generate_street_scenes(tmp_path, num_train=4, num_val=1, size=(32, 64))
    data = load_cityscapes(root, progress=False)
    assert (len(data["train"]), len(data["validation"])) == (4, 1)


def test_cli(tmp_path, capsys):
    assert (
        main(["--output", str(tmp_path), "--num-train", "1", "--num-val", "1", "--height", "32", "--width", "48"]) == 0
    )
    assert "1 train, 1 val, 32x48" in capsys.readouterr().out
    assert len(list(tmp_path.rglob("*_gtFine_labelIds.png"))) == 2
    other = tmp_path / "other"
    (other / "leftImg8bit").mkdir(parents=True)
    assert main(["--output", str(other)]) == 2  # a folder in use: a usage error
