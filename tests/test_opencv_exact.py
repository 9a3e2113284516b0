"""The OpenCV-exact kernels (`fpn_seg.opencv_exact`) and the two image backends of the augmentation
(`fpn_seg.data.image_ops`): bit for bit against OpenCV's recorded outputs (`tests/fixtures/cv2_resize_reference.npz`),
against OpenCV itself when it is installed, and against each other."""

import hashlib

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from fpn_seg.data.image_ops import (
    HSV_TO_RGB_SHA256,
    OpenCVImageOps,
    TorchImageOps,
    convert_table,
    hsv_domain,
    opencv_hsv_matches,
)
from fpn_seg.optional_opencv import load_opencv
from fpn_seg.opencv_exact import hsv_to_rgb_uint8, resize_linear_uint8, resize_nearest, rgb_to_hsv_uint8

RNG = np.random.default_rng(0)


def windows(height: int, width: int, count: int = 4) -> list[tuple[int, int, int, int]]:
    """The whole output and `count` random non-empty windows (top, bottom, left, right) of it."""
    boxes = [(0, height, 0, width)]
    while len(boxes) <= count:
        top, bottom = sorted(RNG.integers(0, height + 1, 2))
        left, right = sorted(RNG.integers(0, width + 1, 2))
        if top < bottom and left < right:
            boxes.append((int(top), int(bottom), int(left), int(right)))
    return boxes


def test_every_window_of_a_resize_equals_opencv_recorded_outputs():
    reference = np.load(FIXTURES / "cv2_resize_reference.npz")
    checked = 0
    for key in (key for key in reference.files if "_linear_" in key):
        name, size = key.split("_linear_")[0], tuple(int(side) for side in key.split("_linear_")[1].split("x"))
        image = torch.from_numpy(reference[f"{name}_image"]).permute(2, 0, 1)  # channels-last memory
        labels = torch.from_numpy(reference[f"{name}_labels"])
        linear, nearest = reference[key], reference[f"{name}_nearest_{size[0]}x{size[1]}"]
        for top, bottom, left, right in windows(*size):
            box = (top, bottom, left, right)
            for layout in (image, image.contiguous()):
                window = resize_linear_uint8(layout, size, box).permute(1, 2, 0).numpy()
                assert np.array_equal(window, linear[top:bottom, left:right]), (key, box)
            assert np.array_equal(resize_nearest(labels, size, box).numpy(), nearest[top:bottom, left:right])
        checked += 1
    assert checked == 27


def test_resize_refuses_a_window_outside_the_output():
    image = torch.zeros((3, 4, 5), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"box \(0, 9, 0, 2\) .* is not a non-empty window of size \(8, 8\)"):
        resize_linear_uint8(image, (8, 8), (0, 9, 0, 2))
    with pytest.raises(TypeError, match="uint8"):
        resize_linear_uint8(image.float(), (8, 8))


def test_resizes_equal_opencv_itself():
    cv2 = pytest.importorskip("cv2")
    for in_size in [(37, 53), (1, 7), (64, 48), (103, 151)]:
        image = RNG.integers(0, 256, (*in_size, 3), dtype=np.uint8)
        labels = RNG.integers(0, 256, in_size, dtype=np.uint8)
        for scale in (0.31, 0.5, 0.77, 1.0, 1.37, 2.0, 2.9):
            size = (max(1, round(in_size[0] * scale)), max(1, round(in_size[1] * scale * 1.1)))
            linear = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR).reshape(*size, 3)
            nearest = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST).reshape(size)
            for top, bottom, left, right in windows(*size, count=2):
                box = (top, bottom, left, right)
                ours = resize_linear_uint8(torch.from_numpy(image).permute(2, 0, 1), size, box)
                assert np.array_equal(ours.permute(1, 2, 0).numpy(), linear[top:bottom, left:right]), (in_size, size)
                assert np.array_equal(resize_nearest(torch.from_numpy(labels), size, box).numpy(),
                                      nearest[top:bottom, left:right])  # fmt: skip


def test_rgb_to_hsv_equals_opencv():
    """Integer arithmetic with OpenCV's tables: every grey, every colour with a channel at 0 or 255 (the edges of
    the hue sectors) and 2^20 random colours (all 2^24 were checked once, in 5 s)."""
    cv2 = pytest.importorskip("cv2")
    values = np.arange(256, dtype=np.uint8)
    edges = [np.stack(np.broadcast_arrays(fixed, values[:, None], values[None, :]), -1).reshape(-1, 3)
             for fixed in (np.uint8(0), np.uint8(255))]  # fmt: skip
    edges = [np.roll(edge, shift, axis=1) for edge in edges for shift in range(3)]
    colours = np.concatenate([np.repeat(values[:, None], 3, 1), *edges, RNG.integers(0, 256, (1 << 20, 3))])
    colours = colours.astype(np.uint8).reshape(-1, 128, 3)[: len(colours) // 128]
    ours = rgb_to_hsv_uint8(torch.from_numpy(colours).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, cv2.cvtColor(colours, cv2.COLOR_RGB2HSV))


def test_hsv_to_rgb_is_the_recorded_function_and_opencv_where_it_matches():
    """The kernel's output on all 11.8 M HSV values is the one recorded as HSV_TO_RGB_SHA256 (OpenCV 5.1's vector
    path with FMA): a change of the kernel fails here. Where the installed OpenCV gives those bytes on this CPU, the
    workers use it (`opencv_hsv_matches`); it is then checked directly too."""
    domain = hsv_domain()
    ours = hsv_to_rgb_uint8(torch.from_numpy(domain).permute(2, 0, 1)).permute(1, 2, 0).contiguous().numpy()
    assert hashlib.sha256(ours.tobytes()).hexdigest() == HSV_TO_RGB_SHA256
    cv2 = load_opencv()
    if cv2 is None or not opencv_hsv_matches():
        pytest.skip("OpenCV is not installed, or its HSV -> RGB rounds differently on this CPU (the torch kernel runs)")
    assert np.array_equal(cv2.cvtColor(domain, cv2.COLOR_HSV2RGB), ours)


@pytest.mark.parametrize("size", [(48, 64), (7, 13)])  # (7, 13): a pixel count that is no multiple of OpenCV's blocks
def test_the_two_backends_give_the_same_bytes(size):
    if load_opencv() is None:
        pytest.skip("OpenCV is not installed: only the torch backend exists")
    image = torch.from_numpy(RNG.integers(0, 256, (*size, 3), dtype=np.uint8)).permute(2, 0, 1)
    as_array = OpenCVImageOps.from_tensor(image)
    same = lambda torch_out, opencv_out: torch.equal(torch_out, OpenCVImageOps.to_tensor(opencv_out))  # noqa: E731
    out_size, box = (size[0] * 2 - 1, size[1] + 5), (1, size[0], 2, size[1] + 3)
    assert same(TorchImageOps.resize(image, out_size, box), OpenCVImageOps.resize(as_array, out_size, box))
    assert same(TorchImageOps.flip(image), OpenCVImageOps.flip(as_array))
    table = convert_table(alpha=1.3, beta=-7.5)
    assert same(TorchImageOps.lookup(image, table), OpenCVImageOps.lookup(as_array, table))
    for channel, table in ((1, convert_table(alpha=0.6)), (0, torch.remainder(torch.arange(256) + 11, 180))):
        table = table.to(torch.uint8)
        expected = TorchImageOps.adjust_hsv(image, channel, table)
        assert same(expected, OpenCVImageOps.adjust_hsv(as_array, channel, table))


def test_convert_table_is_mmseg_convert_value_by_value():
    values = torch.arange(256, dtype=torch.uint8)
    for alpha, beta in ((1.0, 31.7), (0.5, 0.0), (1.5, 0.0), (1.0, -32.0)):
        expected = np.clip(values.numpy().astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
        assert np.array_equal(convert_table(alpha, beta).numpy(), expected)
