"""mmseg's test modes (whole, sliding window, multi-scale + flip), each against a computation written out in the test
(on the eager model: `optimize=False`; the optimised default is checked against it separately)."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from torch.nn import functional as F

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment
from fpn_seg.image_reading import image_to_tensor
from fpn_seg.inference import prepare_model, slide_windows
from fpn_seg.optimization import is_batch_norm_folded


def decisive_model(num_labels: int = 5) -> SemanticFPNForSemanticSegmentation:
    """A tiny model whose classes are well separated (a freshly initialised classifier gives near-ties)."""
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=num_labels)).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(100)
    return model


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pixel_values_at(processor: SemanticFPNImageProcessor, image: np.ndarray, size) -> torch.Tensor:
    """(1, 3, h, w) normalised pixels of `image` resized to `size` (the processor's own steps)."""
    return processor.normalize_image(processor.resize_image(image_to_tensor(image), size))[None]


def logits_of(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values).logits


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis, derived independently: every `stride`, then one flush with the far edge."""
    if size <= crop:
        return [0]
    return list(range(0, size - crop, stride)) + [size - crop]


def independent_slide(model, pixel_values: torch.Tensor, crop, stride) -> torch.Tensor:
    height, width = pixel_values.shape[-2:]
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    total, count = None, torch.zeros(height, width)
    for top in window_starts(height, crop[0], stride[0]):
        for left in window_starts(width, crop[1], stride[1]):
            window = logits_of(model, pixel_values[:, :, top : top + crop_h, left : left + crop_w])
            total = torch.zeros(*window.shape[:2], height, width) if total is None else total
            total[:, :, top : top + crop_h, left : left + crop_w] += window
            count[top : top + crop_h, left : left + crop_w] += 1
    assert count.min() >= 1
    return total / count


# ---------------------------------------------------------------------------------------------------- whole


def test_whole_inference_equals_processor_model_post_process_and_ignores_batching():
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, 0), random_image(30, 70, 1), random_image(40, 50, 2), random_image(48, 64, 3)]
    label_maps, probabilities = segment(model, processor, images, batch_size=3, return_probabilities=True)
    for image, label_map, image_probabilities in zip(images, label_maps, probabilities):
        inputs = processor(image)
        with torch.no_grad():
            outputs = model(**inputs)
        expected = processor.post_process_semantic_segmentation(outputs, [image.shape[:2]])[0]
        assert label_map.shape == image.shape[:2] and label_map.dtype == torch.int64
        assert torch.equal(label_map, expected)
        torch.testing.assert_close(image_probabilities.sum(0), torch.ones(image.shape[:2]))
    one_by_one = segment(model, processor, images, batch_size=1)
    assert all(torch.equal(a, b) for a, b in zip(label_maps, one_by_one))
    same_size = [images[0], images[2]]
    as_batches = [np.stack(same_size), torch.from_numpy(np.stack(same_size)).permute(0, 3, 1, 2)]  # BHWC, BCHW
    expected = segment(model, processor, same_size)
    for batch in as_batches:
        assert all(torch.equal(a, b) for a, b in zip(segment(model, processor, batch), expected))


def test_segment_runs_an_exact_optimised_copy_and_leaves_the_model_alone():
    model = decisive_model()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, 0), random_image(48, 64, 1)]
    optimised, optimised_probabilities = segment(model, processor, images, return_probabilities=True)
    plain, plain_probabilities = segment(model, processor, images, return_probabilities=True, optimize=False)
    assert all(torch.equal(a, b) for a, b in zip(optimised, plain))
    for a, b in zip(optimised_probabilities, plain_probabilities):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float rounding: logits are ~100 here
    assert not is_batch_norm_folded(model)
    assert {type(module) for module in model.modules() if isinstance(module, torch.nn.Conv2d)} == {torch.nn.Conv2d}
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    folded = prepare_model(model)
    assert is_batch_norm_folded(folded) and prepare_model(folded) is folded  # not optimised twice


def test_segment_restores_training_mode_and_runs_in_bf16():
    model = decisive_model()
    model.train()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    image = random_image(40, 50, 0)
    label_map = segment(model, processor, image)[0]
    assert model.training
    assert torch.equal(segment(model, processor, image, optimize=False)[0], label_map)
    assert model.training
    model.eval()
    bf16_map = segment(model, processor, image, bf16=True)[0]
    assert bf16_map.shape == label_map.shape == (40, 50)
    assert (bf16_map == label_map).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize(
    "height, width",
    [(17, 21), (24, 32), (50, 71), (20, 45)],
    ids=["smaller-than-crop", "equal-to-crop", "larger-than-crop", "shorter-but-wider"],
)
def test_slide_inference_against_independent_windows(height, width):
    crop, stride = (24, 32), (16, 20)
    model = decisive_model()
    processor = SemanticFPNImageProcessor(do_resize=False)
    image = random_image(height, width, seed=height)
    label_maps, probabilities = segment(
        model, processor, [image], mode="slide", crop_size=crop, stride=stride, return_probabilities=True,
        optimize=False,
    )
    expected_logits = independent_slide(model, pixel_values_at(processor, image, (height, width)), crop, stride)
    torch.testing.assert_close(probabilities[0], expected_logits[0].softmax(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(label_maps[0], expected_logits[0].argmax(0))
    expected_windows = len(window_starts(height, crop[0], stride[0])) * len(window_starts(width, crop[1], stride[1]))
    assert len(slide_windows(height, width, crop, stride)) == expected_windows
    if height <= crop[0] and width <= crop[1]:  # one window holding the whole image: the same as whole inference
        assert torch.equal(label_maps[0], segment(model, processor, image, optimize=False)[0])


def test_slide_inference_on_a_resized_image_returns_the_original_size():
    crop, stride = (24, 32), (16, 20)
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(100, 75))
    image = random_image(30, 40, seed=5)
    assert processor.test_size(30, 40) == (75, 100)
    label_map = segment(model, processor, image, mode="slide", crop_size=crop, stride=stride, optimize=False)[0]
    logits = independent_slide(model, pixel_values_at(processor, image, (75, 100)), crop, stride)
    expected = F.interpolate(logits, size=(30, 40), mode="bilinear", align_corners=False)[0].argmax(0)
    assert label_map.shape == (30, 40) and torch.equal(label_map, expected)


# ---------------------------------------------------------------------------------------------------- ms + flip


def test_multiscale_flip_on_a_non_square_image_against_independent_views():
    model = decisive_model()
    scale, ratios = (64, 40), (0.5, 1.0, 1.5)
    processor = SemanticFPNImageProcessor(scale=scale)
    image = random_image(37, 53, seed=7)
    label_maps, probabilities = segment(
        model, processor, image, scales=ratios, flip=True, return_probabilities=True, optimize=False
    )

    total, sizes = torch.zeros(1, 5, 37, 53), []
    for ratio in ratios:
        long_side, short_side = int(scale[0] * ratio), int(scale[1] * ratio)
        factor = min(long_side / 53, short_side / 37)
        size = (int(37 * factor + 0.5), int(53 * factor + 0.5))
        sizes.append(size)
        pixel_values = pixel_values_at(processor, image, size)
        for flipped in (False, True):
            view = pixel_values.flip(-1) if flipped else pixel_values
            logits = F.interpolate(logits_of(model, view), size=(37, 53), mode="bilinear", align_corners=False)
            view_probabilities = logits.softmax(1)
            total += view_probabilities.flip(-1) if flipped else view_probabilities
    assert sizes == [(20, 29), (40, 57), (60, 86)]
    expected = total[0] / 6
    torch.testing.assert_close(probabilities[0], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(label_maps[0], expected.argmax(0))
    single_view = segment(model, processor, image, scales=(1.0,), optimize=False)[0]
    assert torch.equal(single_view, segment(model, processor, image, optimize=False)[0])
    assert not torch.equal(label_maps[0], single_view)  # the other views change the result


# ---------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "sliding"}, "mode must be 'whole' or 'slide'"),
        ({"mode": "slide"}, "needs crop_size and stride"),
        ({"mode": "slide", "crop_size": (0, 8), "stride": 4}, "crop_size must be"),
        ({"mode": "slide", "crop_size": 8, "stride": (4, 4, 4)}, "stride must be"),
        ({"mode": "slide", "crop_size": (8, 8), "stride": (4, 9)}, r"stride \(4, 9\) is larger than crop_size"),
        ({"scales": ()}, "scales must be positive"),
        ({"scales": (1.0, -0.5)}, "scales must be positive"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = SemanticFPNForSemanticSegmentation(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        segment(model, SemanticFPNImageProcessor(do_resize=False), random_image(8, 8, 0), **kwargs)
