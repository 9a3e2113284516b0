"""Images a user may hand over by mistake (or not): broken files are refused naming the file, odd modes just work.

Surfaces: `open_image` (the one opener), `image_to_tensor` / `label_to_tensor`, `SemanticFPNImageProcessor(...)` and
`fpn_seg.segment` given file paths. (The predict CLI's handling of the same files is in test_predict.py; arrays and tensors in
test_image_processor.py.)
"""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image, UnidentifiedImageError

from fpn_seg import (  # the reading errors and open_image as users import them (their home: fpn_seg.image_reading)
    CorruptImageError,
    ImageFileError,
    ImageTooLargeError,
    NotAnImageError,
    SemanticFPNForSemanticSegmentation,
    SemanticFPNImageProcessor,
    image_to_tensor,
    label_to_tensor,
    open_image,
    segment,
)

SIDE = 9000  # "larger than 8000x8000"


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: coloured blocks plus noise, so that a wrong decode changes the segmentation."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    blocks = np.stack([(rows // 7) * 60 % 256, (cols // 5) * 45 % 256, ((rows + cols) // 9) * 30 % 256], -1)
    return np.clip(blocks + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)


def saved(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


# ------------------------------------------------------------------------------------------------ refused files


def truncated_png(tmp_path: Path) -> Path:
    full = saved(tmp_path / "full.png", Image.fromarray(scene(30, 40)))
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return tmp_path / "truncated.png"


def truncated_jpeg(tmp_path: Path) -> Path:
    full = saved(tmp_path / "full.jpg", Image.fromarray(scene(30, 40)), quality=95)
    (tmp_path / "truncated.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return tmp_path / "truncated.jpg"


def text_named_png(tmp_path: Path) -> Path:
    (tmp_path / "notes.png").write_text("class 1 is road, class 2 is sidewalk\n")
    return tmp_path / "notes.png"


def zero_bytes(tmp_path: Path) -> Path:
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path / "empty.png"


def folder_named_png(tmp_path: Path) -> Path:
    (tmp_path / "photos.png").mkdir()
    return tmp_path / "photos.png"


def huge_png(tmp_path: Path) -> Path:
    """A real 9000x9000 PNG (1-bit: a few kB on disk); refused when 81 M pixels exceed Pillow's bomb limit."""
    return saved(tmp_path / "huge.png", Image.new("1", (SIDE, SIDE)))


# (make the file, error class, message fragment: a regex)
BAD_IMAGE_FILES = {
    "truncated-png": (truncated_png, OSError, r"Cannot read image file '.*truncated\.png' \(truncated or corrupt\)"),
    "truncated-jpeg": (truncated_jpeg, OSError, r"Cannot read image file '.*truncated\.jpg' \(truncated or corrupt\)"),
    "text-file-named-png": (
        text_named_png, UnidentifiedImageError, r"'.*notes\.png' is not an image file Pillow can read \(37 bytes\)"
    ),
    "zero-byte-file": (zero_bytes, UnidentifiedImageError, r"'.*empty\.png' is not an image .*\(empty file\)"),
    "folder-named-png": (folder_named_png, FileNotFoundError, r"No image file at '.*photos\.png'"),
    "9000x9000-above-the-pillow-limit": (
        huge_png, ValueError, r"'.*huge\.png' refused by Pillow's decompression-bomb limit: .*81000000 pixels.*"
        r"2 \* PIL\.Image\.MAX_IMAGE_PIXELS; raise PIL\.Image\.MAX_IMAGE_PIXELS"
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def model_and_processor():
    torch.set_num_threads(1)
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=5)).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(100)  # decisive classes: a wrong input changes the labels
    return model, SemanticFPNImageProcessor(scale=(64, 32))


READERS = {
    "open_image": lambda path, model, processor: open_image(path),
    "image_to_tensor": lambda path, model, processor: image_to_tensor(path),
    "label_to_tensor": lambda path, model, processor: label_to_tensor(path),
    "processor": lambda path, model, processor: processor(path),
    "segment": lambda path, model, processor: segment(model, processor, [str(path)]),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(BAD_IMAGE_FILES))
def test_bad_image_files_are_refused_naming_the_file(case, reader, tmp_path, model_and_processor, monkeypatch):
    make_file, error, message = BAD_IMAGE_FILES[case]
    # 81 M pixels are under Pillow's default limit (89.5 M warns, 179 M refuses): lower it so that the real header of
    # the 9000x9000 file is refused without decoding 81 MB.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000_000)
    path = make_file(tmp_path)
    with pytest.raises(error, match=re.compile(message, re.S)):
        READERS[reader](path, *model_and_processor)


def test_open_image_reads_bytes_headers_and_refuses_above_max_pixels(tmp_path):
    path = saved(tmp_path / "scene.png", Image.fromarray(scene(30, 40)))
    header_only = open_image(path.read_bytes(), "scene.png", decode=False)
    assert header_only.size == (40, 30) and header_only.format == "PNG"
    header_only.close()
    np.testing.assert_array_equal(np.asarray(open_image(path)), scene(30, 40))
    with pytest.raises(ImageTooLargeError, match=r"'scene\.png' is 40x30 = 1200 pixels, above the limit of 1000") as error:
        open_image(path.read_bytes(), "scene.png", max_pixels=1000)
    assert (error.value.size, error.value.limit) == ((40, 30), 1000)
    # Each error is a subclass of what callers catch, and carries a short reason for `name: reason` lists.
    cases = {truncated_png: (CorruptImageError, OSError), text_named_png: (NotAnImageError, UnidentifiedImageError)}
    for make_file, (error_type, base) in cases.items():
        with pytest.raises(error_type) as error:
            open_image(make_file(tmp_path).read_bytes(), "upload-7")
        assert isinstance(error.value, ImageFileError) and isinstance(error.value, base)
        assert "upload-7" in str(error.value) and "upload-7" not in error.value.reason


# ------------------------------------------------------------------------------------------------ files that work


def grey(tmp_path):
    pixels = scene(23, 31)[:, :, 1]
    return saved(tmp_path / "grey.png", Image.fromarray(pixels)), np.repeat(pixels[:, :, None], 3, axis=2)


def grey_alpha(tmp_path):
    pixels = scene(23, 31)[:, :, :2]
    path = saved(tmp_path / "grey_alpha.png", Image.fromarray(pixels, mode="LA"))
    return path, np.repeat(pixels[:, :, :1], 3, axis=2)


def rgba(tmp_path):
    pixels = np.concatenate([scene(23, 31), np.full((23, 31, 1), 7, np.uint8)], axis=2)
    return saved(tmp_path / "rgba.png", Image.fromarray(pixels, mode="RGBA")), pixels[:, :, :3]


def palette(tmp_path):
    colours = scene(16, 16).reshape(256, 3)
    indices = (np.arange(23 * 31).reshape(23, 31) * 7 % 256).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(colours.flatten().tolist())
    return saved(tmp_path / "palette.png", image), colours[indices]


def palette_with_transparency(tmp_path):
    path, expected = palette(tmp_path)
    with Image.open(path) as image:
        image.load()
    return saved(tmp_path / "palette_transparent.png", image, transparency=bytes(range(0, 256, 3))), expected


def sixteen_bit(tmp_path):
    deep = (scene(23, 31)[:, :, 0].astype(np.uint16) << 8) | 0xAB  # 16-bit data: the high byte carries the image
    path = saved(tmp_path / "deep.png", Image.fromarray(deep))
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    return path, np.repeat((deep >> 8).astype(np.uint8)[:, :, None], 3, axis=2)  # as cv2 (mmseg) reads it


def cmyk_jpeg(tmp_path):
    path = saved(tmp_path / "cmyk.jpg", Image.fromarray(scene(23, 31)).convert("CMYK"), quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        return path, np.array(stored.convert("RGB"))


def one_bit(tmp_path):
    pixels = scene(23, 31)[:, :, 0] > 128
    expected = np.repeat(pixels[:, :, None], 3, axis=2).astype(np.uint8) * 255
    return saved(tmp_path / "mask.png", Image.fromarray(pixels)), expected


def one_pixel(tmp_path):
    pixels = np.array([[[200, 30, 90]]], dtype=np.uint8)
    return saved(tmp_path / "dot.png", Image.fromarray(pixels)), pixels


def exif_rotated_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 degrees counter-clockwise to display"
    path = saved(tmp_path / "phone.jpg", Image.fromarray(scene(23, 31)), exif=exif, quality=95)
    with Image.open(path) as stored:
        return path, np.array(stored.convert("RGB").transpose(Image.Transpose.ROTATE_90))


WORKING_IMAGES = {
    "grey": grey,
    "grey+alpha": grey_alpha,
    "rgba": rgba,
    "palette": palette,
    "palette-with-transparency": palette_with_transparency,
    "16-bit-grey": sixteen_bit,
    "cmyk-jpeg": cmyk_jpeg,
    "1-bit": one_bit,
    "1x1": one_pixel,
    "exif-rotated-jpeg": exif_rotated_jpeg,
}


@pytest.mark.parametrize("case", sorted(WORKING_IMAGES))
def test_image_modes_work_and_read_as_the_expected_rgb(case, tmp_path, model_and_processor):
    """The file gives the labels of its RGB pixels decoded independently (cv2's 16-bit rule, alpha dropped...)."""
    model, processor = model_and_processor
    path, expected_rgb = WORKING_IMAGES[case](tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning either
        from_file = segment(model, processor, [str(path)])[0]
    from_pixels = segment(model, processor, [expected_rgb])[0]
    assert from_file.shape == expected_rgb.shape[:2]
    assert torch.equal(from_file, from_pixels)
    assert torch.equal(image_to_tensor(path).permute(1, 2, 0), torch.from_numpy(expected_rgb))


def test_a_9000x9000_image_works_under_pillows_default_limit(tmp_path):
    """81 M pixels: below `PIL.Image.MAX_IMAGE_PIXELS` (89.5 M), so no warning; the processor resizes it to the test
    scale. Decoding costs 3 bytes per pixel and the float resize 12 more (about 1.5 GB at peak here)."""
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, which the README states
    halves = np.zeros((SIDE, SIDE), dtype=bool)
    halves[:, : SIDE // 2] = True  # 1-bit: left half white, right half black
    path = saved(tmp_path / "huge.png", Image.fromarray(halves))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixel_values = SemanticFPNImageProcessor(scale=(64, 32), do_normalize=False)(path)["pixel_values"]
    assert tuple(pixel_values.shape) == (1, 3, 32, 32)
    assert (pixel_values[..., :15] == 255).all() and (pixel_values[..., 17:] == 0).all()


def test_pillows_warning_zone_is_a_warning_not_a_refusal(tmp_path, monkeypatch):
    """Between MAX_IMAGE_PIXELS and twice that, Pillow warns (`DecompressionBombWarning`) and the image is read."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = saved(tmp_path / "big.png", Image.fromarray(scene(30, 50)))  # 1500 pixels
    with pytest.warns(Image.DecompressionBombWarning, match="1500 pixels"):
        assert tuple(image_to_tensor(path).shape) == (3, 30, 50)
