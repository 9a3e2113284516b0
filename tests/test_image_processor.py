"""SemanticFPNImageProcessor: mmseg parity, resizing, every kind of input, labels, batching, saving, post-processing."""

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REFERENCE_MODELS, load_reference, reference_config, tiny_config
from PIL import Image
from torch.nn import functional as F
from transformers import AutoImageProcessor
from transformers.modeling_outputs import SemanticSegmenterOutput

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.image_reading import image_to_tensor, label_to_tensor
from fpn_seg.conversion import convert_mmseg_state_dict
from fpn_seg.presets import preset_config, preset_processor


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth gradients plus noise, so that interpolation weights matter everywhere."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    smooth = np.stack([rows * 255 / max(height - 1, 1), cols * 255 / max(width - 1, 1), (rows + cols) % 256], -1)
    return np.clip(smooth + rng.integers(-40, 41, (height, width, 3)), 0, 255).astype(np.uint8)


def numpy_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Independent bilinear resize without antialiasing (half-pixel centres, edge clamping, as cv2's INTER_LINEAR),
    in float64, rounded half up: (H, W, C) uint8 -> (height, width, C) uint8."""

    def taps(size_in: int, size_out: int):
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, source - low

    row_low, row_high, row_weight = taps(image.shape[0], height)
    col_low, col_high, col_weight = taps(image.shape[1], width)
    pixels = image.astype(np.float64)
    rows = pixels[row_low] * (1 - row_weight)[:, None, None] + pixels[row_high] * row_weight[:, None, None]
    out = rows[:, col_low] * (1 - col_weight)[None, :, None] + rows[:, col_high] * col_weight[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def mmseg_test_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's `rescale_size` with a (long, short) scale, written out again for the test."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


# ---------------------------------------------------------------------------------------------------- mmseg parity


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_pixel_values_match_mmseg(name):
    arrays, _ = load_reference(name)
    rgb = arrays["image_bgr_uint8"][..., ::-1]  # mmseg reads BGR and its data preprocessor swaps to RGB
    height, width = rgb.shape[1:3]
    # The fixtures were made at the input size: no resize (do_resize=False, or a scale that fits the image exactly).
    for processor in (SemanticFPNImageProcessor(do_resize=False), SemanticFPNImageProcessor(scale=(width, height))):
        for images in (list(rgb), [Image.fromarray(np.ascontiguousarray(image)) for image in rgb]):
            pixel_values = processor(images, return_tensors="pt")["pixel_values"]
            assert pixel_values.dtype == torch.float32 and pixel_values.shape == arrays["pixel_values"].shape
            assert np.abs(pixel_values.numpy() - arrays["pixel_values"]).max() <= 1e-5


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_image_to_prediction_matches_mmseg(name):
    arrays, checkpoint = load_reference(name)
    model = SemanticFPNForSemanticSegmentation(reference_config(name)).eval()
    model.load_state_dict(convert_mmseg_state_dict(checkpoint["state_dict"], model), strict=True)
    processor = SemanticFPNImageProcessor(do_resize=False)
    images = [Image.fromarray(np.ascontiguousarray(image[..., ::-1])) for image in arrays["image_bgr_uint8"]]
    with torch.no_grad():
        outputs = model(**processor(images))
    predictions = processor.post_process_semantic_segmentation(outputs, [image.size[::-1] for image in images])
    np.testing.assert_array_equal(torch.stack(predictions).numpy(), arrays["pred"])


# ---------------------------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((375, 500), (2048, 512), (512, 683)),  # ADE20K-style enlargement
        ((1200, 1600), (2048, 512), (512, 683)),  # ADE20K-style shrink
        ((683, 512), (2048, 512), (683, 512)),  # portrait, already at scale
        ((600, 800), (2048, 1024), (1024, 1365)),  # Cityscapes scale, enlarged
        ((97, 130), (2048, 512), (512, 686)),
    ],
)
def test_resize_matches_bilinear_without_antialiasing(size, scale, expected):
    processor = SemanticFPNImageProcessor(scale=scale)
    assert processor.test_size(*size) == mmseg_test_size(*size, scale) == expected
    image = random_image(*size)
    resized = processor.resize_image(image_to_tensor(image), expected)  # (3, h, w) uint8
    assert resized.dtype == torch.uint8 and tuple(resized.shape) == (3, *expected)
    reference = numpy_bilinear(image, *expected).astype(np.int16)
    difference = np.abs(resized.permute(1, 2, 0).numpy().astype(np.int16) - reference)
    assert difference.max() <= 1, difference.max()  # cv2's 11-bit fixed point vs float64 bilinear


def test_resizes_equal_opencv_bit_for_bit():
    """`resize_image` / `resize_label` against OpenCV's uint8 INTER_LINEAR / INTER_NEAREST (mmseg's `mmcv.imresize`),
    from `tests/fixtures/cv2_resize_reference.npz`; also in a batch."""
    reference = np.load(FIXTURES / "cv2_resize_reference.npz")
    processor = SemanticFPNImageProcessor()
    checked = 0
    for key in (key for key in reference.files if "_linear_" in key):
        name, size = key.split("_linear_")[0], tuple(int(side) for side in key.split("_linear_")[1].split("x"))
        image = torch.from_numpy(reference[f"{name}_image"]).permute(2, 0, 1).contiguous()
        assert np.array_equal(processor.resize_image(image, size).permute(1, 2, 0).numpy(), reference[key]), key
        batch = processor.resize_image(torch.stack([image, image.flip(-1)]), size)
        assert np.array_equal(batch[0].permute(1, 2, 0).numpy(), reference[key]), key
        labels = torch.from_numpy(reference[f"{name}_labels"])
        nearest = reference[f"{name}_nearest_{size[0]}x{size[1]}"]
        assert np.array_equal(processor.resize_label(labels, size).numpy(), nearest), key
        checked += 1
    assert checked == 27


def test_test_scale_leaves_cityscapes_images_untouched():
    processor = preset_processor("fpn_r50_512x1024_80k_cityscapes")
    assert processor.test_size(1024, 2048) == (1024, 2048)
    image = torch.randint(0, 256, (3, 1024, 2048), dtype=torch.uint8)
    assert processor.resize_image(image, (1024, 2048)) is image


def test_pixel_values_use_the_rounded_uint8_resize():
    image = random_image(40, 50)
    processor = SemanticFPNImageProcessor(scale=(64, 48))  # 40x50 -> 48x60
    pixel_values = processor(image)["pixel_values"][0]
    resized = torch.from_numpy(numpy_bilinear(image, 48, 60)).permute(2, 0, 1).float()
    expected = (resized - torch.tensor(processor.image_mean).view(3, 1, 1)) / torch.tensor(processor.image_std).view(
        3, 1, 1
    )
    step = 1 / min(processor.image_std)  # one grey level
    assert (pixel_values - expected).abs().max() <= step + 1e-6


def test_labels_resize_nearest_within_the_label_set():
    rng = np.random.default_rng(0)
    values = np.array([0, 3, 7, 255])
    label = values[rng.integers(0, len(values), (375, 500))]
    processor = SemanticFPNImageProcessor(scale=(2048, 512))
    for size in [(512, 683), (200, 333)]:
        resized = processor.resize_label(torch.from_numpy(label), size).numpy()
        rows = np.arange(size[0]) * label.shape[0] // size[0]
        cols = np.arange(size[1]) * label.shape[1] // size[1]
        np.testing.assert_array_equal(resized, label[rows][:, cols])
        assert set(np.unique(resized)) <= set(values)
    batch = processor(random_image(375, 500), segmentation_maps=label.astype(np.uint8))
    assert batch["labels"].shape == (1, 512, 683) and batch["labels"].dtype == torch.int64
    assert set(batch["labels"].unique().tolist()) <= set(values.tolist())


# ---------------------------------------------------------------------------------------------------- label policy


def test_label_policy_reduce_labels_and_label_map():
    image = random_image(6, 8)
    raw = np.array([[0, 1, 5, 150, 255, 0, 2, 3]] * 6, dtype=np.uint8)
    ade = SemanticFPNImageProcessor(do_resize=False, do_reduce_labels=True)
    expected = np.array([[255, 0, 4, 149, 255, 255, 1, 2]] * 6)
    np.testing.assert_array_equal(ade(image, segmentation_maps=raw)["labels"][0].numpy(), expected)

    label_ids = np.array([[7, 8, 26, 33, 0, 1, 24, 255]] * 6, dtype=np.uint8)
    cityscapes = SemanticFPNImageProcessor(do_resize=False, label_map={7: 0, 8: 1, 24: 11, 26: 13, 33: 18})
    expected = np.array([[0, 1, 13, 18, 255, 255, 11, 255]] * 6)
    np.testing.assert_array_equal(cityscapes(image, segmentation_maps=label_ids)["labels"][0].numpy(), expected)
    # The processor's policy is the config's: one function encodes labels everywhere.
    config = preset_config("fpn_r50_512x512_160k_ade20k", label_map=None)
    processor = SemanticFPNImageProcessor.from_model_config(config)
    assert processor.do_reduce_labels and processor.ignore_index == config.ignore_index
    raw_tensor = torch.from_numpy(raw)
    assert processor.label_policy == config.label_policy
    torch.testing.assert_close(processor.encode_labels(raw_tensor), config.label_policy.encode(raw_tensor))


# ---------------------------------------------------------------------------------------------------- image inputs


def save_image(tmp_path, name, image: Image.Image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_image_files_of_every_mode(tmp_path):
    rgb = random_image(20, 30)
    grey = rgb[:, :, 0]
    # RGB, grey and RGBA PNGs: exact.
    from_rgb = image_to_tensor(save_image(tmp_path, "rgb.png", Image.fromarray(rgb)))
    assert torch.equal(from_rgb.permute(1, 2, 0), torch.from_numpy(rgb))
    from_grey = image_to_tensor(str(save_image(tmp_path, "grey.png", Image.fromarray(grey))))
    assert torch.equal(from_grey, torch.from_numpy(grey).expand(3, -1, -1))
    alpha = np.random.default_rng(1).integers(0, 256, (20, 30, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA")
    assert torch.equal(image_to_tensor(save_image(tmp_path, "rgba.png", rgba)).permute(1, 2, 0), torch.from_numpy(rgb))
    # Palette PNG: the colours of the palette entries.
    palette = np.random.default_rng(2).integers(0, 256, (256, 3), dtype=np.uint8)
    indices = np.random.default_rng(3).integers(0, 6, (20, 30), dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.flatten().tolist())
    from_palette = image_to_tensor(save_image(tmp_path, "palette.png", paletted)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(from_palette, palette[indices])
    see_through = save_image(tmp_path, "transparent.png", paletted, transparency=bytes([0, 128, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when such palettes are converted straight to RGB
        np.testing.assert_array_equal(image_to_tensor(see_through).permute(1, 2, 0).numpy(), palette[indices])
    # 16-bit grey PNG: the high byte (v >> 8), as cv2 reads 16-bit images as 8-bit.
    deep = np.random.default_rng(4).integers(0, 65536, (20, 30), dtype=np.uint16)
    from_deep = image_to_tensor(save_image(tmp_path, "deep.png", Image.fromarray(deep)))
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I")
    np.testing.assert_array_equal(from_deep[0].numpy(), (deep >> 8).astype(np.uint8))
    # CMYK JPEG: converted back to RGB close to the original colours.
    across, down = np.meshgrid(np.linspace(0, 255, 30), np.linspace(0, 255, 20))
    smooth = np.stack([across, down, np.full((20, 30), 90.0)], -1).astype(np.uint8)
    cmyk = save_image(tmp_path, "cmyk.jpg", Image.fromarray(smooth).convert("CMYK"), quality=98)
    with Image.open(cmyk) as stored:
        assert stored.mode == "CMYK"
    from_cmyk = image_to_tensor(cmyk).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(from_cmyk - smooth).mean() < 4


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (250, 10, 10)  # left half red, right half blue as stored
    stored[:, 20:] = (10, 10, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save_image(tmp_path, "rotated.jpg", Image.fromarray(stored), exif=exif, quality=95)
    upright = image_to_tensor(path)
    assert tuple(upright.shape) == (3, 40, 20)
    expected = np.rot90(stored, k=-1)  # clockwise: the stored left half becomes the top
    assert np.abs(upright.permute(1, 2, 0).numpy().astype(int) - expected).mean() < 6
    with Image.open(path) as opened:
        assert image_to_tensor(opened).shape == upright.shape  # PIL images get the same treatment


def test_arrays_and_tensors_in_any_layout():
    rgb = random_image(12, 17)
    expected = torch.from_numpy(rgb).permute(2, 0, 1)
    layouts = [
        rgb,
        np.ascontiguousarray(rgb.transpose(2, 0, 1)),
        rgb[..., ::-1][..., ::-1],  # negative strides
        torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        torch.from_numpy(rgb),  # (H, W, C) tensor
        torch.from_numpy(rgb).permute(2, 0, 1)[None],  # (1, 3, H, W)
        rgb.astype(np.float32) / 255.0,  # floats in [0, 1]
        rgb.astype(np.float64),  # floats in 0..255
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,
        rgb.astype(np.uint16) << 8,  # 16-bit
        np.concatenate([rgb, np.zeros((12, 17, 1), np.uint8)], axis=2),  # RGBA: alpha dropped
    ]
    for index, image in enumerate(layouts):
        result = image_to_tensor(image)
        assert result.dtype == torch.uint8 and torch.equal(result, expected), index
    grey = rgb[:, :, 1]
    assert torch.equal(image_to_tensor(grey), torch.from_numpy(grey).expand(3, -1, -1))
    assert torch.equal(image_to_tensor(grey[None]), torch.from_numpy(grey).expand(3, -1, -1))


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (12, TypeError, "int"),
        ({"image": 1}, TypeError, "dict"),
        (np.zeros((5, 6, 7), np.uint8), ValueError, r"shape \(5, 6, 7\)"),
        (np.zeros((2, 3, 5, 6), np.uint8), ValueError, "shape"),
        (np.zeros((4, 4), bool), TypeError, "bool"),
        (np.full((4, 4), np.nan, np.float32), ValueError, "NaN"),
        (np.full((4, 4, 3), 300, np.int32), ValueError, "0..255"),
        (np.zeros((4, 4), np.complex64), TypeError, "complex64"),
    ],
)
def test_bad_images_are_named(bad, error, message):
    with pytest.raises(error, match=message):
        image_to_tensor(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_to_tensor(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------------- label inputs


def test_label_maps_from_files_arrays_and_tensors(tmp_path):
    values = np.random.default_rng(0).integers(0, 19, (10, 14)).astype(np.uint8)
    values[0, 0] = 255
    paletted = Image.fromarray(values, mode="P")
    paletted.putpalette(np.random.default_rng(1).integers(0, 256, 768).tolist())  # colours must not matter
    deep = (values.astype(np.uint16) * 100).astype(np.uint16)
    sources = {
        "L png": (save_image(tmp_path, "l.png", Image.fromarray(values)), values),
        "P png": (save_image(tmp_path, "p.png", paletted), values),
        "16-bit png": (save_image(tmp_path, "i16.png", Image.fromarray(deep)), deep),
        "I image": (Image.fromarray(values.astype(np.int32)), values),
        "numpy": (values, values),
        "numpy (1, H, W)": (values[None].astype(np.int32), values),
        "numpy (H, W, 1)": (values[:, :, None], values),
        "torch": (torch.from_numpy(values).long(), values),
        "whole floats": (values.astype(np.float32), values),
    }
    for name, (source, expected) in sources.items():
        label = label_to_tensor(source)
        assert label.dtype == torch.int64 and label.shape == (10, 14), name
        np.testing.assert_array_equal(label.numpy(), expected.astype(np.int64), err_msg=name)


def test_colour_coded_and_bad_label_maps_are_refused(tmp_path):
    colours = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    colour_png = save_image(tmp_path, "colour.png", Image.fromarray(colours))
    for source in (colour_png, colours, Image.fromarray(colours).convert("RGBA")):
        with pytest.raises(ValueError, match="colour-coded mask, expected class indices"):
            label_to_tensor(source)
    with pytest.raises(ValueError, match="whole numbers"):
        label_to_tensor(np.full((4, 4), 0.5))
    with pytest.raises(TypeError, match="builtins.list"):
        label_to_tensor(["not", "a", "map"])


# ---------------------------------------------------------------------------------------------------- batching


def test_mixed_sizes_are_padded_with_a_mask_or_returned_per_image():
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, seed=1), random_image(30, 70, seed=2)]  # -> 48x60 and 27x64
    labels = [np.full((40, 50), 1), np.full((30, 70), 2)]
    batch = processor(images, segmentation_maps=labels)
    assert batch["pixel_values"].shape == (2, 3, 48, 64) and batch["labels"].shape == batch["pixel_mask"].shape
    assert batch["pixel_mask"][0, :48, :60].all() and not batch["pixel_mask"][0, :, 60:].any()
    assert batch["pixel_mask"][1, :27, :64].all() and not batch["pixel_mask"][1, 27:].any()
    assert (batch["pixel_values"][1, :, 27:] == 0).all() and (batch["labels"][1, 27:] == 255).all()
    for index, image in enumerate(images):
        alone = processor(image, segmentation_maps=labels[index])
        height, width = alone["pixel_values"].shape[-2:]
        assert torch.equal(batch["pixel_values"][index, :, :height, :width], alone["pixel_values"][0])
        assert torch.equal(batch["labels"][index, :height, :width], alone["labels"][0])
    per_image = processor(images, return_tensors=None)["pixel_values"]
    assert [tuple(p.shape) for p in per_image] == [(3, 48, 60), (3, 27, 64)]
    for image, pixel_values in zip(images, per_image):
        torch.testing.assert_close(pixel_values, processor(image)["pixel_values"][0], rtol=0, atol=0)


def test_batched_images_do_not_depend_on_their_neighbours():
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, seed=seed) for seed in range(3)]
    labels = [np.random.default_rng(seed).integers(0, 4, (40, 50)) for seed in range(3)]
    batch = processor(images, segmentation_maps=labels)
    assert batch["pixel_values"].shape == (3, 3, 48, 60) and batch["labels"].shape == (3, 48, 60)
    assert batch["pixel_values"].is_contiguous()
    for index in range(3):
        alone = processor(images[index], segmentation_maps=labels[index])
        assert torch.equal(batch["pixel_values"][index], alone["pixel_values"][0])
        assert torch.equal(batch["labels"][index], alone["labels"][0])
    as_numpy = processor(np.stack(images), return_tensors="np")  # a 4-D array is a batch
    np.testing.assert_array_equal(as_numpy["pixel_values"], batch["pixel_values"].numpy())


def test_preprocess_argument_errors():
    processor = SemanticFPNImageProcessor(do_resize=False)
    image = random_image(8, 10)
    with pytest.raises(ValueError, match="2 segmentation maps for 1 images"):
        processor([image], segmentation_maps=[np.zeros((8, 10)), np.zeros((8, 10))])
    with pytest.raises(ValueError, match=r"size \(8, 9\).*size \(8, 10\)"):
        processor(image, segmentation_maps=np.zeros((8, 9), np.uint8))
    with pytest.raises(TypeError, match="unknown options.*size_divisor"):
        processor(image, size_divisor=32)
    with pytest.raises(ValueError, match="return_tensors"):
        processor(image, return_tensors="tf")
    with pytest.raises(ValueError, match="scale"):
        SemanticFPNImageProcessor(scale=(512,))
    assert processor(image, do_resize=True, scale=(20, 16))["pixel_values"].shape == (1, 3, 16, 20)
    assert processor.do_resize is False  # overrides are for one call


# ---------------------------------------------------------------------------------------------------- size, scale

KEEP_RATIO_CASES = [((40, 50), (64, 48)), ((30, 70), (64, 48)), ((97, 130), (2048, 512)), ((600, 800), (2048, 1024))]


@pytest.mark.parametrize("image_size, scale", KEEP_RATIO_CASES)
def test_size_dict_is_mmseg_keep_ratio_rule_and_scale_its_alias(image_size, scale):
    by_size = SemanticFPNImageProcessor(size={"shortest_edge": min(scale), "longest_edge": max(scale)})
    by_scale = SemanticFPNImageProcessor(scale=scale)
    assert by_size.size == by_scale.size and by_size.scale == by_scale.scale == list(scale)
    assert by_size.test_size(*image_size) == mmseg_test_size(*image_size, scale)
    image = random_image(*image_size[:2])
    assert torch.equal(by_size(image)["pixel_values"], by_scale(image)["pixel_values"])
    per_call = SemanticFPNImageProcessor(do_resize=False)
    assert torch.equal(per_call(image, do_resize=True, size=by_size.size)["pixel_values"], by_scale(image)["pixel_values"])


def test_presets_give_their_test_size_and_take_either_name():
    ade = "fpn_r50_512x512_160k_ade20k"
    assert preset_processor(ade).size == {"shortest_edge": 512, "longest_edge": 2048}
    assert preset_processor(ade, size={"height": 64, "width": 96}).size == {"height": 64, "width": 96}
    assert preset_processor(ade, scale=(96, 64)).size == {"shortest_edge": 64, "longest_edge": 96}


def test_default_size_is_the_former_default_scale():
    processor = SemanticFPNImageProcessor()
    assert processor.size == {"shortest_edge": 1024, "longest_edge": 2048} and processor.scale == [2048, 1024]
    assert processor.test_size(512, 1024) == mmseg_test_size(512, 1024, (2048, 1024)) == (1024, 2048)


def test_one_sided_size_bounds_that_side_only():
    assert SemanticFPNImageProcessor(size={"shortest_edge": 20}).test_size(40, 100) == (20, 50)
    assert SemanticFPNImageProcessor(size={"longest_edge": 50}).test_size(40, 100) == (20, 50)
    assert SemanticFPNImageProcessor(size={"longest_edge": 50}).scale is None


def test_fixed_size_resize_equals_opencv_bit_for_bit():
    """size={"height", "width"}: mmseg's keep_ratio=False resize, the same OpenCV uint8 INTER_LINEAR (and
    INTER_NEAREST for labels) as `tests/fixtures/cv2_resize_reference.npz` holds."""
    reference = np.load(FIXTURES / "cv2_resize_reference.npz")
    checked = 0
    for key in (key for key in reference.files if "_linear_" in key):
        name, (height, width) = key.split("_linear_")[0], (int(side) for side in key.split("_linear_")[1].split("x"))
        processor = SemanticFPNImageProcessor(size={"height": height, "width": width}, do_normalize=False)
        assert processor.scale is None
        labels = reference[f"{name}_labels"]
        out = processor(reference[f"{name}_image"], segmentation_maps=labels, input_data_format="channels_last")
        assert np.array_equal(out["pixel_values"][0].permute(1, 2, 0).numpy(), reference[key].astype(np.float32)), key
        assert np.array_equal(out["labels"][0].numpy(), reference[f"{name}_nearest_{height}x{width}"]), key
        checked += 1
    assert checked == 27


def test_saved_size_and_old_scale_files_load(tmp_path):
    processor = SemanticFPNImageProcessor(scale=(64, 48), do_reduce_labels=True)
    processor.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 48, "longest_edge": 64} and "scale" not in saved
    old = {key: value for key, value in saved.items() if key not in ("size", "resample", "do_rescale", "rescale_factor")}
    old = {**old, "scale": [64, 48]}  # a preprocessor_config.json written before `size`
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "preprocessor_config.json").write_text(json.dumps(old))
    for folder in ("new", "old"):
        loaded = AutoImageProcessor.from_pretrained(tmp_path / folder)
        assert loaded.size == {"shortest_edge": 48, "longest_edge": 64} and loaded.to_dict() == processor.to_dict()
        assert AutoImageProcessor.from_pretrained(tmp_path / folder, scale=(32, 16)).scale == [32, 16]
        resized = AutoImageProcessor.from_pretrained(tmp_path / folder, size={"height": 8, "width": 9})
        assert resized.size == {"height": 8, "width": 9}


def test_size_and_scale_conflicts_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"size=\{'shortest_edge': 40, 'longest_edge': 64\} and scale=\[64, 48\] disagree"):
        SemanticFPNImageProcessor(scale=(64, 48), size={"shortest_edge": 40, "longest_edge": 64})
    agreeing = SemanticFPNImageProcessor(scale=(64, 48), size={"shortest_edge": 48, "longest_edge": 64})
    assert agreeing.scale == [64, 48]
    image = random_image(10, 12)
    with pytest.raises(ValueError, match="size=.* and scale=.* disagree"):
        agreeing(image, scale=(32, 16), size={"height": 8, "width": 8})
    for size, message in [
        (512, "size must be a dict"),
        ({"height": 8}, "is not supported; give"),
        ({"max_height": 8, "max_width": 8}, "is not supported; give"),
        ({"shortest_edge": 0, "longest_edge": 8}, "positive whole numbers"),
        ({"shortest_edge": 9, "longest_edge": 8}, "shortest_edge > longest_edge"),
    ]:
        with pytest.raises(ValueError, match=message):
            SemanticFPNImageProcessor(size=size)
    with pytest.raises(ValueError, match="do_resize needs a size"):
        SemanticFPNImageProcessor(size=None)


# ---------------------------------------------------------------------------------------------------- standard options


def test_resample_is_bilinear_only():
    from PIL.Image import Resampling

    image = random_image(20, 30)
    processor = SemanticFPNImageProcessor(scale=(24, 16))
    for bilinear in (2, Resampling.BILINEAR, "bilinear"):
        assert SemanticFPNImageProcessor(scale=(24, 16), resample=bilinear).resample == Resampling.BILINEAR
        assert torch.equal(processor(image, resample=bilinear)["pixel_values"], processor(image)["pixel_values"])
    for other in (Resampling.NEAREST, Resampling.BICUBIC, 3):
        with pytest.raises(ValueError, match="resample=.* is not supported: the resize is OpenCV's uint8 bilinear"):
            processor(image, resample=other)


def test_do_rescale_multiplies_before_normalising():
    image = random_image(12, 16)
    plain = SemanticFPNImageProcessor(do_resize=False, do_normalize=False)(image)["pixel_values"]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    processor = SemanticFPNImageProcessor(do_resize=False, do_rescale=True, image_mean=mean, image_std=std)
    expected = (plain * torch.tensor(1 / 255, dtype=torch.float32) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std
    ).view(3, 1, 1)
    assert torch.equal(processor(image)["pixel_values"], expected)
    halved = SemanticFPNImageProcessor(do_resize=False, do_normalize=False, do_rescale=True, rescale_factor=0.5)
    assert torch.equal(halved(image)["pixel_values"], plain * 0.5)
    with pytest.raises(ValueError, match="do_rescale needs a rescale_factor"):
        SemanticFPNImageProcessor(do_rescale=True, rescale_factor=None)


def test_do_pad_and_pad_size():
    images = [random_image(40, 50, seed=1), random_image(30, 70, seed=2)]  # -> 48x60 and 27x64
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    with pytest.raises(ValueError, match=r"resize to different sizes \[\(27, 64\), \(48, 60\)\] and do_pad is off"):
        processor(images, do_pad=False)
    same = processor([images[0], images[0]], do_pad=False)
    assert same["pixel_values"].shape == (2, 3, 48, 60) and "pixel_mask" not in same
    assert [tuple(p.shape) for p in processor(images, do_pad=False, return_tensors=None)["pixel_values"]] == [
        (3, 48, 60),
        (3, 27, 64),
    ]
    padded = processor(images, segmentation_maps=[np.ones((40, 50)), np.ones((30, 70))], pad_size={"height": 50, "width": 70})
    assert padded["pixel_values"].shape == (2, 3, 50, 70) and padded["labels"].shape == padded["pixel_mask"].shape
    assert int(padded["pixel_mask"][0].sum()) == 48 * 60 and (padded["labels"][0, 48:] == 255).all()
    alone = processor(images[1], pad_size={"height": 50, "width": 70})  # one image, padded as well
    assert alone["pixel_mask"].shape == (1, 50, 70) and torch.equal(alone["pixel_values"][0], padded["pixel_values"][1])
    with pytest.raises(ValueError, match=r"resizes to \(48, 64\), larger than pad_size"):
        processor(images, pad_size={"height": 40, "width": 64})
    with pytest.raises(ValueError, match="pad_size must be a dict"):
        SemanticFPNImageProcessor(pad_size=64)


@pytest.mark.parametrize(
    "option, value, reason",
    [
        ("crop_size", {"height": 8, "width": 8}, "mmseg's test pipeline does not crop"),
        ("do_center_crop", True, "mmseg's test pipeline does not crop"),
        ("default_to_square", True, "size is always a dict"),
        ("disable_grouping", True, "images are processed one by one"),
        ("image_seq_length", 4, "not a vision-language processor"),
    ],
)
def test_options_that_do_not_apply_are_refused_with_the_reason(option, value, reason):
    with pytest.raises(ValueError, match=f"{option} does not apply to Semantic FPN: {reason}"):
        SemanticFPNImageProcessor(**{option: value})
    with pytest.raises(ValueError, match=f"{option} does not apply to Semantic FPN: {reason}"):
        SemanticFPNImageProcessor()(random_image(8, 8), **{option: value})
    assert SemanticFPNImageProcessor(**{option: None}).size  # None: not given


# ---------------------------------------------------------------------------------------------------- saving


def test_save_load_and_auto_image_processor_round_trip(tmp_path):
    processor = preset_processor("fpn_r50_512x512_160k_ade20k", label_map={3: 1, 4: 2})
    assert processor.scale == [2048, 512] and processor.do_reduce_labels
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SemanticFPNImageProcessor"
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_semantic_fpn.SemanticFPNImageProcessor"
    shipped = {path.name for path in tmp_path.iterdir()}
    assert {"image_processing_semantic_fpn.py", "atomic.py"} <= shipped  # the processor and the sibling it imports
    assert "label_sets.py" not in shipped and "presets.py" not in shipped  # class names live in config.json
    for loaded in (SemanticFPNImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SemanticFPNImageProcessor
        assert loaded.scale == [2048, 512] and loaded.label_map == {3: 1, 4: 2} and loaded.do_reduce_labels
        assert loaded.to_dict() == processor.to_dict()
    overridden = AutoImageProcessor.from_pretrained(tmp_path, scale=(1024, 256))
    assert overridden.scale == [1024, 256]

    config = tiny_config(reduce_labels=True)
    config.save_pretrained(tmp_path / "model")
    SemanticFPNImageProcessor.from_model_config(config).save_pretrained(tmp_path / "model")
    assert AutoImageProcessor.from_pretrained(tmp_path / "model").do_reduce_labels
    with pytest.raises(ValueError, match="Unknown Semantic FPN preset"):
        preset_processor("fpn_r18_cityscapes")


# ---------------------------------------------------------------------------------------------------- post-processing


def test_post_process_resizes_logits_to_each_original_size():
    processor = SemanticFPNImageProcessor()
    logits = torch.randn(2, 5, 16, 24)
    outputs = SemanticSegmenterOutput(logits=logits)
    label_maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(31, 45), (16, 24)])
    assert [tuple(m.shape) for m in label_maps] == [(31, 45), (16, 24)]
    expected = F.interpolate(logits[:1], size=(31, 45), mode="bilinear", align_corners=False).argmax(1)[0]
    assert torch.equal(label_maps[0], expected) and torch.equal(label_maps[1], logits[1].argmax(0))
    assert label_maps[0].dtype == torch.int64
    assert [tuple(m.shape) for m in processor.post_process_semantic_segmentation(outputs)] == [(16, 24)] * 2
    with pytest.raises(ValueError, match="target_sizes has 1 entries but the logits hold 2 images"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(31, 45)])
