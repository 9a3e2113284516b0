"""Pictures: palettes, colour masks, overlays with a legend, label PNGs, training curves."""

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from fpn_seg.label_sets import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from fpn_seg.visualize import class_pixel_counts, colorize, overlay, palette_for, plot_training_curves, save_label_png

NAMES = {0: "sky", 1: "road", 2: "car", 3: "tree"}


def test_palette_for_cityscapes_names_is_the_cityscapes_palette():
    palette = palette_for(dict(enumerate(CITYSCAPES_CLASSES)))
    assert palette.shape == (19, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, np.array(CITYSCAPES_PALETTE, dtype=np.uint8))


def test_palette_for_other_names_gives_distinct_colours():
    palette = palette_for({index: f"thing_{index}" for index in range(150)})
    assert palette.shape == (150, 3)
    assert len({tuple(colour) for colour in palette}) == 150
    assert not (palette == 0).all(axis=1).any()  # black is kept for ignored pixels


def test_colorize_maps_ids_to_palette_colours_and_ignored_to_black():
    palette = palette_for(NAMES)
    labels = np.array([[0, 1, 2], [3, 255, 7]])
    colours = colorize(torch.from_numpy(labels), palette, ignore_index=255)
    assert colours.shape == (2, 3, 3) and colours.dtype == np.uint8
    for (row, col), class_id in np.ndenumerate(labels):
        expected = palette[class_id] if class_id < len(palette) else (0, 0, 0)
        np.testing.assert_array_equal(colours[row, col], expected)


def _picture(height: int = 40, width: int = 60) -> tuple[Image.Image, np.ndarray]:
    """A grey image and a label map with classes 0 (top), 2 (bottom left) and ignored pixels (bottom right)."""
    image = Image.new("RGB", (width, height), (100, 100, 100))
    labels = np.zeros((height, width), dtype=np.int64)
    labels[height // 2 :, : width // 2] = 2
    labels[height // 2 :, width // 2 :] = 255
    return image, labels


def test_overlay_blends_the_mask_and_adds_a_legend_of_the_present_classes():
    image, labels = _picture()
    palette = palette_for(NAMES)
    picture = overlay(image, labels, NAMES, alpha=0.5)
    assert picture.mode == "RGB" and picture.height == 40 and picture.width > 60
    pixels = np.asarray(picture).astype(int)
    np.testing.assert_allclose(pixels[0, 0], (100 + palette[0].astype(int)) / 2, atol=1)
    np.testing.assert_allclose(pixels[-1, 0], (100 + palette[2].astype(int)) / 2, atol=1)
    np.testing.assert_allclose(pixels[-1, 59], (50, 50, 50), atol=1)  # ignored: blended with black
    legend_colours = {tuple(colour) for colour in np.asarray(picture)[:, 60:].reshape(-1, 3)}
    assert tuple(palette[0]) in legend_colours and tuple(palette[2]) in legend_colours
    assert tuple(palette[1]) not in legend_colours and tuple(palette[3]) not in legend_colours


def test_overlay_alpha_zero_keeps_the_image_and_the_legend_grows_with_many_classes():
    image, labels = _picture(height=12, width=20)
    np.testing.assert_array_equal(np.asarray(overlay(image, labels, NAMES, alpha=0.0))[:12, :20], np.asarray(image))
    many = {index: f"class_{index}" for index in range(10)}
    picture = overlay(image, np.arange(240).reshape(12, 20) % 10, many)
    assert picture.height > 12  # ten legend rows do not fit beside a 12-pixel image


def test_overlay_refuses_a_label_map_of_another_size():
    image, labels = _picture()
    with pytest.raises(ValueError, match="does not match the image size"):
        overlay(image, labels[:-1], NAMES)


def test_overlay_applies_the_exif_orientation_like_the_label_maps():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    stored = Image.new("RGB", (30, 20), (0, 0, 0))
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    upright_labels = np.zeros((30, 20), dtype=np.int64)  # (H, W) of the upright image
    picture = overlay(Image.open(buffer), upright_labels, NAMES)
    assert picture.height == 30 and picture.width > 20


@pytest.mark.parametrize("max_id, mode, dtype", [(18, "L", np.uint8), (255, "L", np.uint8), (1000, "I;16", np.uint16)])
def test_save_label_png_round_trip(tmp_path, max_id, mode, dtype):
    labels = np.random.default_rng(0).integers(0, max_id + 1, size=(9, 13))
    labels[0, 0] = max_id
    path = tmp_path / "labels.png"
    save_label_png(torch.from_numpy(labels), path)
    with Image.open(path) as reread:
        assert reread.mode == mode
        values = np.asarray(reread)
    assert values.dtype == dtype
    np.testing.assert_array_equal(values, labels)


def test_save_label_png_refuses_negative_ids(tmp_path):
    with pytest.raises(ValueError, match="negative ids"):
        save_label_png(np.array([[0, -1]]), tmp_path / "labels.png")


@pytest.fixture
def svg_backend():
    """A backend other than Agg (as a notebook's inline one), restored afterwards."""
    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(backend)


def test_plot_training_curves_writes_a_png_and_leaves_the_backend_alone(tmp_path, svg_backend):
    log_history = [{"loss": 2.0 - 0.1 * step, "learning_rate": 0.01, "step": step} for step in range(1, 11)]
    log_history += [{"eval_mean_iou": 0.2, "eval_loss": 1.5, "step": 5}, {"eval_mean_iou": 0.4, "step": 10}]
    log_history.append({"train_runtime": 12.0, "step": 10})  # the final summary entry has no loss
    path = plot_training_curves(log_history, tmp_path / "curves.png", title="tiny run")
    assert path == tmp_path / "curves.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (700, 400)
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20  # lines, axes and text were drawn, not a blank figure
    assert matplotlib.get_backend() == svg_backend  # plotting did not switch the user's backend


def test_class_pixel_counts_leave_out_values_that_are_not_class_ids():
    label_map = torch.tensor([[0, 2, 2], [255, 2, 0]])
    assert class_pixel_counts(label_map, 3).tolist() == [2, 0, 3]
    assert class_pixel_counts(label_map.numpy(), 2).tolist() == [2, 0]
