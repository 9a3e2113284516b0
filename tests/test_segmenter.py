"""The one inference path (`SemanticSegmenter`): equal to the implementation it replaced, prepared once per model and
never stale, device-resident, and its bad inputs (unseen shapes, shapes above the graph cache's bound, out of memory
in a batch, models on 'meta' or on two devices). CUDA graphs' cache logic runs on the CPU with a stand-in capture."""

import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norms, tiny_config
from torch.nn import functional as F

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, SemanticSegmenter, segment
from fpn_seg.cuda_graphs import CapturedGraph, CUDAGraphRunner
from fpn_seg.image_reading import image_to_tensor
from fpn_seg.inference import prepare_model
from fpn_seg.optimization import is_batch_norm_folded, optimize_for_inference
from fpn_seg.prepared_model import ModelPlacementError, PreparedModel, WeightsFingerprint
from fpn_seg.segmenter import SegmentationOutOfMemoryError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decisive_model(num_labels: int = 5) -> SemanticFPNForSemanticSegmentation:
    """A tiny model with non-trivial BatchNorms (folding is not a no-op) and well-separated classes."""
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config(num_labels=num_labels))).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(100)
    return model


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------ the implementation the one path replaced


def replaced_segment(model, processor, images, mode="whole", crop_size=None, stride=None, scales=None, flip=False,
                     batch_size=1, return_probabilities=False):  # fmt: skip
    """`fpn_seg.segment` as it was before the one path (commit 170d231), on the inference model given: images grouped
    by size, resized with the processor's building blocks, logits resized and the argmax taken in the function."""
    from fpn_seg.segmenter import slide_windows

    def logits_of(pixel_values):
        return model(pixel_values=pixel_values, return_dict=True).logits.float()

    def slide(pixel_values):
        height, width = pixel_values.shape[-2:]
        total, count = None, torch.zeros((1, 1, height, width))
        for y1, y2, x1, x2 in slide_windows(height, width, crop_size, stride):
            window = logits_of(pixel_values[:, :, y1:y2, x1:x2])
            total = window.new_zeros((*window.shape[:2], height, width)) if total is None else total
            total[:, :, y1:y2, x1:x2] += window
            count[:, :, y1:y2, x1:x2] += 1
        return total / count

    def view(batch, ratio, flipped):
        height, width = batch.shape[-2:]
        size = processor.test_size(height, width, ratio)
        pixel_values = processor.normalize_image(processor.resize_image(batch, size))
        pixel_values = pixel_values.flip(-1) if flipped else pixel_values
        logits = slide(pixel_values) if mode == "slide" else logits_of(pixel_values)
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits

    tensors = [image_to_tensor(image) for image in images]
    groups = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    several = scales is not None or flip
    views = [(ratio, flipped) for ratio in (scales or (1.0,)) for flipped in ((False, True) if flip else (False,))]
    label_maps, probabilities = [None] * len(tensors), [None] * len(tensors)
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                indices = group[start : start + batch_size]
                batch = torch.stack([tensors[index] for index in indices])
                if several:
                    total = None
                    for ratio, flipped in views:
                        scores = view(batch, ratio, flipped).softmax(dim=1)
                        scores = scores.flip(-1) if flipped else scores
                        total = scores if total is None else total + scores
                    scores = total / len(views)
                else:
                    scores = view(batch, 1.0, False)
                for position, index in enumerate(indices):
                    label_maps[index] = scores[position].argmax(dim=0)
                    probabilities[index] = scores[position] if several else scores[position].softmax(dim=0)
    return (label_maps, probabilities) if return_probabilities else label_maps


CASES = {
    "whole, mixed sizes, batches of 3": dict(batch_size=3),
    "whole, batch of one": dict(batch_size=1),
    "slide": dict(mode="slide", crop_size=(24, 32), stride=(16, 20), batch_size=2),
    "ms+flip": dict(scales=(0.5, 1.0, 1.5), flip=True, batch_size=2),
    "slide ms+flip": dict(mode="slide", crop_size=(24, 32), stride=(16, 21), scales=(0.75, 1.25), flip=True),
}


@pytest.mark.parametrize("optimize", [False, True], ids=["as-given", "optimised"])
@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_the_one_path_gives_the_replaced_implementations_results(options, optimize):
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, 0), random_image(30, 70, 1), random_image(40, 50, 2), random_image(48, 64, 3),
              random_image(40, 50, 4)]  # fmt: skip
    if options.get("mode") == "slide" and options.get("scales"):
        images = images[:2]  # the slowest combination: two sizes are enough
    labels, probabilities = segment(model, processor, images, return_probabilities=True, optimize=optimize, **options)
    inference_model = optimize_for_inference(model) if optimize else model
    expected_labels, expected_probabilities = replaced_segment(inference_model, processor, images,
                                                               return_probabilities=True, **options)  # fmt: skip
    for index, image in enumerate(images):
        assert labels[index].shape == image.shape[:2] and labels[index].device.type == "cpu"
        assert torch.equal(labels[index], expected_labels[index]), index
        torch.testing.assert_close(probabilities[index], expected_probabilities[index], rtol=0, atol=1e-6)
    again = segment(model, processor, images, optimize=optimize, **options)  # the prepared copy, reused
    assert all(torch.equal(a, b) for a, b in zip(labels, again))


def test_a_padded_batch_through_the_segmenter_equals_each_image_alone():
    """`segment_batch` takes images of any sizes: the processor pads them (pixel_mask), the model runs each on its
    own region, the post-processing crops: the same label maps and probabilities as one image at a time."""
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    segmenter = SemanticSegmenter(model, processor)
    images = [image_to_tensor(random_image(40, 50, 0)), image_to_tensor(random_image(30, 70, 1))]
    for options in ({}, {"scales": (0.75, 1.0), "flip": True}, {"mode": "slide", "crop_size": 24, "stride": 16}):
        maps, scores, failures = segmenter.segment_batch(images, return_probabilities=True, **options)
        assert failures == {}
        for image, label_map, image_scores in zip(images, maps, scores):
            (alone,), (alone_scores,), _ = segmenter.segment_batch([image], return_probabilities=True, **options)
            assert torch.equal(label_map, alone), options
            torch.testing.assert_close(image_scores, alone_scores, rtol=0, atol=1e-6)


def test_every_step_runs_on_the_models_device():
    """On the 'meta' device (shapes only, no data), which needs no GPU: a result there shows that the processor, the
    model and the post-processing all ran on the segmenter's device, with the images sent there as uint8."""
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    mixed = [image_to_tensor(random_image(40, 50, 0)), image_to_tensor(random_image(30, 70, 1))]
    features = processor(mixed, device="meta")  # a padded batch with its pixel_mask
    assert {key: value.device.type for key, value in features.items()} == {"pixel_values": "meta", "pixel_mask": "meta"}
    assert processor([image.to("meta") for image in mixed])["pixel_values"].device.type == "meta"  # input's device
    segmenter = SemanticSegmenter(decisive_model(), processor, device="meta")
    assert segmenter.device.type == "meta" and segmenter.prepared.optimized
    images = [mixed[0], image_to_tensor(random_image(40, 50, 2))]  # one size: a padded batch needs its sizes' values
    for options in ({}, {"scales": (0.5, 1.0), "flip": True}, {"mode": "slide", "crop_size": 32, "stride": 32}):
        maps, scores, _ = segmenter.segment_batch(images, return_probabilities=True, **options)
        assert [(label_map.device.type, tuple(label_map.shape)) for label_map in maps] == [("meta", (40, 50))] * 2
        assert [(item.device.type, tuple(item.shape)) for item in scores] == [("meta", (5, 40, 50))] * 2


# ------------------------------------------------------------------------ prepared once, never stale


def test_the_optimised_copy_is_prepared_once_and_never_stale(monkeypatch):
    import fpn_seg.prepared_model

    made = []
    optimize = fpn_seg.prepared_model.optimize_for_inference
    monkeypatch.setattr(fpn_seg.prepared_model, "optimize_for_inference",
                        lambda model, **options: made.append(1) or optimize(model, **options))  # fmt: skip
    model = decisive_model()
    initial_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    image = random_image(40, 50, 0)
    first = segment(model, processor, image)[0]
    for _ in range(3):
        assert torch.equal(segment(model, processor, image)[0], first)
    segmenter = SemanticSegmenter(model, processor)
    assert torch.equal(segmenter(image)[0], first) and is_batch_norm_folded(prepare_model(model))
    assert len(made) == 1  # one copy for every call above

    # Training steps change the weights in place: the next call prepares the model again.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    for _ in range(2):
        optimizer.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    trained = segment(model, processor, image)[0]
    assert len(made) == 2
    assert torch.equal(trained, segment(model, processor, image, optimize=False)[0])  # the new weights
    assert not torch.equal(trained, first)
    assert torch.equal(segmenter(image)[0], trained) and len(made) == 2  # the segmenter picks up the same copy

    # load_state_dict, a replaced parameter, a dtype change: each prepares again.
    model.load_state_dict(initial_state)
    assert torch.equal(segment(model, processor, image)[0], first) and len(made) == 3
    model.decode_head.classifier.weight = torch.nn.Parameter(model.decode_head.classifier.weight.detach() * -1)
    flipped = segment(model, processor, image)[0]
    assert len(made) == 4 and torch.equal(flipped, segment(model, processor, image, optimize=False)[0])
    model.double()
    segment(model, processor, image)
    assert len(made) == 5


def test_the_cache_does_not_keep_models_alive():
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    references = []
    for optimize in (True, False):
        model = decisive_model()
        segment(model, processor, random_image(20, 30, 0), optimize=optimize)
        references.append(weakref.ref(model))
        del model
    gc.collect()
    assert [reference() for reference in references] == [None, None]


# ------------------------------------------------------------------------ CUDA graphs' cache logic, on the CPU


class StandInCapture:
    """A stand-in for `capture_cuda_graph` (the only double here): 'capturing' runs the function once on a static
    copy of the input; 'replaying' runs it again on whatever the static input holds, into the static output."""

    def __init__(self, fail_for: set[tuple] = frozenset()):
        self.captured, self.fail_for = [], fail_for

    def __call__(self, function, example):
        if tuple(example.shape) in self.fail_for:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        static_input = example.clone()
        static_output = function(static_input)
        self.captured.append(tuple(example.shape))
        return CapturedGraph(lambda: static_output.copy_(function(static_input)), static_input, static_output)


def test_graph_cache_runs_unseen_shapes_eagerly_then_replays_and_evicts():
    calls = []

    def function(tensor):
        calls.append(tuple(tensor.shape))
        return tensor * 2 + 1

    capture = StandInCapture()
    runner = CUDAGraphRunner(function, max_graphs=2, max_elements=1000, capture=capture)
    a, b, c = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 6, 5), torch.randn(2, 3, 4, 5)
    assert torch.equal(runner(a), a * 2 + 1) and capture.captured == []  # seen once: eager
    out_a = runner(a + 1)  # seen twice: captured, then replayed
    assert capture.captured == [(1, 3, 4, 5)] and torch.equal(out_a, (a + 1) * 2 + 1)
    out_a2 = runner(a - 1)
    assert torch.equal(out_a2, (a - 1) * 2 + 1) and torch.equal(out_a, (a + 1) * 2 + 1)  # outputs are copies
    assert runner.stats.replays == 2 and runner.stats.captures == 1
    for tensor in (b, b, c, c):  # two more shapes: the least recently used graph (a's) goes
        runner(tensor)
    assert runner.captured_keys == [runner.key(b), runner.key(c)] and runner.stats.evictions == 1
    runner(a)  # a again: its graph is gone and it counts as unseen (eager), then it is captured anew
    assert capture.captured[-1] == (2, 3, 4, 5) and runner.stats.eager_first_sight == 4
    runner(a)
    assert capture.captured[-1] == (1, 3, 4, 5) and runner.captured_keys[-1] == runner.key(a)
    runner(a.contiguous(memory_format=torch.channels_last))  # other strides: another key
    stats = runner.stats
    assert stats.eager_first_sight == 5 and len(calls) == stats.eager_first_sight + stats.captures + stats.replays


def test_graph_cache_bound_and_failed_captures_run_eagerly():
    def function(tensor):
        return tensor.flip(-1)

    capture = StandInCapture(fail_for={(1, 3, 8, 8)})
    runner = CUDAGraphRunner(function, max_elements=100, capture=capture)
    large = torch.randn(1, 3, 20, 20)  # 400 pixels > 100: never captured
    for _ in range(3):
        assert torch.equal(runner(large), large.flip(-1))
    assert capture.captured == [] and runner.stats.eager_too_large == 3
    failing = torch.randn(1, 3, 8, 8)
    runner(failing)
    with pytest.warns(RuntimeWarning, match=r"Could not capture a CUDA graph for inputs of shape \(1, 3, 8, 8\)"):
        assert torch.equal(runner(failing), failing.flip(-1))
    assert torch.equal(runner(failing), failing.flip(-1))  # no second attempt, no second warning
    assert runner.stats.failed_shapes == [(1, 3, 8, 8)] and runner.stats.eager_capture_failed == 2
    with pytest.raises(ValueError, match="max_graphs must be a positive int"):
        CUDAGraphRunner(function, max_graphs=0)


def test_segmenter_with_graphs_equals_eager_and_drops_graphs_of_stale_weights():
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    capture = StandInCapture()
    segmenter = SemanticSegmenter(model, processor, cuda_graphs=True, capture=capture, max_graph_pixels=48 * 64)
    images = [random_image(40, 50, 0), random_image(40, 50, 1), random_image(30, 70, 2), random_image(96, 128, 3)]
    expected = segment(model, processor, images, scales=(1.0, 1.5), flip=True, return_probabilities=True)
    for _ in range(2):
        labels, probabilities = segmenter(images, scales=(1.0, 1.5), flip=True, return_probabilities=True)
        assert all(torch.equal(a, b) for a, b in zip(labels, expected[0]))
        assert all(torch.equal(a, b) for a, b in zip(probabilities, expected[1]))  # the replayed kernels: the same
    runner = segmenter.prepared.graph_runner("fp32")
    # Every view runs twice (flip): the views within the bound of 48x64 pixels are captured, the others run eagerly.
    sizes = {processor.test_size(*image.shape[:2], ratio=ratio) for image in images for ratio in (1.0, 1.5)}
    assert set(capture.captured) == {(1, 3, *size) for size in sizes if size[0] * size[1] <= 48 * 64}
    assert runner.stats.eager_too_large > 0 and runner.stats.replays > 0
    with torch.no_grad():
        model.decode_head.classifier.bias.add_(5.0)  # the user changes the weights
    labels = segmenter(images)
    assert segmenter.prepared.graph_runner("fp32") is not runner  # a new prepared copy: the old graphs are gone
    assert all(torch.equal(a, b) for a, b in zip(labels, segment(model, processor, images, optimize=False)))


# ------------------------------------------------------------------------ bad input


def test_out_of_memory_in_a_batch_retries_one_by_one_then_names_the_image(monkeypatch):
    model = decisive_model()
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    images = [random_image(40, 50, 0), random_image(40, 50, 1), random_image(45, 50, 2), random_image(40, 50, 3)]
    expected = segment(model, processor, images)
    logits = PreparedModel.logits
    seen = []

    too_large = processor.test_size(45, 50)

    def short_of_memory(self, pixel_values, precision="fp32", image_sizes=None):
        """The model-call seam fails for batches of several images, and for the 45x50 image's processed size."""
        seen.append(len(pixel_values))
        if len(pixel_values) > 1 or tuple(pixel_values.shape[-2:]) == too_large:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return logits(self, pixel_values, precision, image_sizes)

    monkeypatch.setattr(PreparedModel, "logits", short_of_memory)
    labels = segment(model, processor, images[:2] + images[3:], batch_size=3)  # a batch of 3, then one by one
    assert all(torch.equal(a, b) for a, b in zip(labels, expected[:2] + expected[3:])) and seen == [3, 1, 1, 1]
    with pytest.raises(SegmentationOutOfMemoryError, match=r"image 2 \(45x50\) does not fit in the memory of cpu, "
                       r"even alone: .*injected.*mode='slide'") as error:  # fmt: skip
        segment(model, processor, images, batch_size=4)
    assert isinstance(error.value, torch.OutOfMemoryError) and error.value.size == (45, 50)
    maps, _, failures = SemanticSegmenter(model, processor).segment_batch(
        [image_to_tensor(image) for image in images], names=["a.png", "b.png", "c.png", "d.png"]
    )
    assert list(failures) == [2] and failures[2].image == "c.png" and maps[2] is None
    assert all(torch.equal(maps[index], expected[index]) for index in (0, 1, 3))


def test_models_on_meta_or_on_two_devices_get_a_one_line_error_or_run_as_dispatched():
    processor = SemanticFPNImageProcessor(scale=(64, 48))
    image = random_image(20, 30, 0)
    on_meta = decisive_model().to("meta")
    with pytest.raises(ModelPlacementError, match=r"weights are on the 'meta' device: they were never loaded .*"
                       r"from_pretrained\(folder\)"):  # fmt: skip
        segment(on_meta, processor, image)
    split = decisive_model()
    split.decode_head.to("meta")
    with pytest.raises(ModelPlacementError, match=r"lie on several devices \(cpu, meta\) \(those on 'meta' were "
                       r"never loaded\): move it to one with model.to\(device\)"):  # fmt: skip
        segment(split, processor, image)
    dispatched = decisive_model()
    dispatched.hf_device_map = {"backbone": "cpu", "neck": "cpu", "decode_head": 0}  # as accelerate marks it
    dispatched.decode_head.to("meta")
    assert PreparedModel(dispatched).optimized is False  # accelerate's hooks move activations: run as given
    with pytest.raises(ValueError, match="cuda_graphs=True needs a torch model on one device"):
        PreparedModel(dispatched, cuda_graphs=True, capture=StandInCapture())


def test_precision_and_graph_switches_are_checked():
    model, processor = decisive_model(), SemanticFPNImageProcessor(scale=(64, 48))
    with pytest.raises(ValueError, match=r"precision='fp16' needs a GPU; on the CPU use precision='bf16'"):
        SemanticSegmenter(model, processor, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        SemanticSegmenter(model, processor, precision="int4")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        SemanticSegmenter(model, processor, cuda_graphs=True)
    with pytest.raises(ValueError, match="runs as given there"):
        SemanticSegmenter(model, processor, device="meta", optimize=False)
    assert not SemanticSegmenter(model, processor).prepared.cuda_graphs  # CPU: today's exact default, eager


def test_weights_fingerprint_rests_on_torch_version_counters():
    """`WeightsFingerprint` reads `Tensor._version`, a private torch attribute (no public counterpart: hashing the
    weights would cost a pass over them per call). This pins the torch behaviour it relies on: every in-place write
    bumps the counter (an optimizer step, `load_state_dict`'s copies, an in-place op under `no_grad`, `fill_`), reading
    the counter of a tensor made under `torch.inference_mode()` raises `RuntimeError` (such models are prepared on
    every call), and the fingerprint turns stale after each write."""
    model = SemanticFPNForSemanticSegmentation(tiny_config()).eval()
    weight = model.decode_head.classifier.weight
    writes = [
        lambda: torch.optim.SGD(model.parameters(), lr=0.1).step(),
        lambda: model.load_state_dict({name: tensor.clone() for name, tensor in model.state_dict().items()}),
        lambda: torch.no_grad()(weight.mul_)(2.0),
        lambda: torch.no_grad()(model.backbone.layer1[0].bn1.running_mean.fill_)(0.5),
    ]
    weight.grad = torch.ones_like(weight)
    for write in writes:
        fingerprint = WeightsFingerprint(model)
        assert fingerprint.matches(model)
        write()
        assert not fingerprint.matches(model)
    version = weight._version
    torch.no_grad()(weight.add_)(1.0)
    assert weight._version == version + 1
    with torch.inference_mode():
        made_in_inference_mode = torch.zeros(3)
    with pytest.raises(RuntimeError):
        made_in_inference_mode._version
    with torch.inference_mode():
        model_made_in_inference_mode = torch.nn.Linear(2, 2)
    assert WeightsFingerprint.of(model_made_in_inference_mode) is None
