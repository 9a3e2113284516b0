"""pipeline("image-segmentation") on a saved folder: with `fpn_seg` imported, and with remote code without it."""

import builtins
import json
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_without_fpn_seg, tiny_config
from PIL import Image
from transformers import pipeline

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment


@pytest.fixture
def model_folder(tmp_path):
    """A saved tiny model (well-separated classes) with its processor, as users get from `save_pretrained`."""
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=5)).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(100)
    folder = tmp_path / "semantic-fpn-tiny"
    model.save_pretrained(folder)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(64, 48)).save_pretrained(folder)
    files = {path.name for path in folder.iterdir()}
    assert {"preprocessor_config.json", "image_processing_semantic_fpn.py", "configuration_semantic_fpn.py"} <= files
    assert "AutoImageProcessor" in json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    return folder


def write_images(folder) -> dict[str, tuple]:
    """Real image files of several kinds -> {name: (path, (height, width) as displayed)}."""
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    images = {
        "rgb.png": (Image.fromarray(rgb), {}),
        "photo.jpg": (Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)), {"quality": 90}),
        "grey.png": (Image.fromarray(rng.integers(0, 256, (30, 41), dtype=np.uint8)), {}),
        "rgba.png": (Image.fromarray(rng.integers(0, 256, (33, 45, 4), dtype=np.uint8), mode="RGBA"), {}),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 26x44 stored -> 44x26 shown
    images["rotated.jpg"] = (Image.fromarray(rng.integers(0, 256, (26, 44, 3), dtype=np.uint8)), {"exif": exif})
    written = {}
    for name, (image, options) in images.items():
        image.save(folder / name, **options)
        shown = (44, 26) if name == "rotated.jpg" else (image.height, image.width)
        written[name] = (folder / name, shown)
    return written


def label_map_from(annotations, id2label: dict[int, str], size) -> np.ndarray:
    """Rebuild the label map from the pipeline's binary masks; checks that they tile the image exactly."""
    label2id = {name: index for index, name in id2label.items()}
    label_map = np.full(size, -1)
    for annotation in annotations:
        mask = np.asarray(annotation["mask"]) > 0
        assert annotation["mask"].size == (size[1], size[0])  # PIL size is (width, height): the original size
        assert (label_map[mask] == -1).all(), "masks overlap"
        label_map[mask] = label2id[annotation["label"]]
    assert (label_map >= 0).all(), "masks do not cover the image"
    return label_map


def test_pipeline_after_import_on_real_files(model_folder, tmp_path, monkeypatch):
    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    segmenter = pipeline("image-segmentation", model=str(model_folder))
    assert prompts == [], "pipeline() asked whether to trust remote code although fpn_seg is imported"
    assert isinstance(segmenter.image_processor, SemanticFPNImageProcessor)
    model, processor = segmenter.model, segmenter.image_processor
    for name, (path, size) in write_images(tmp_path / "images").items():
        annotations = segmenter(str(path))
        assert all(set(a) == {"score", "label", "mask"} for a in annotations), name
        label_map = label_map_from(annotations, model.config.id2label, size)
        assert len(annotations) == len(np.unique(label_map)), name  # one entry per class present
        np.testing.assert_array_equal(label_map, segment(model, processor, path)[0].numpy(), err_msg=name)
    batch = segmenter([str(path) for path, _ in write_images(tmp_path / "again").values()])
    assert len(batch) == 5 and all(isinstance(annotations, list) for annotations in batch)


def test_pipeline_with_remote_code_without_the_package(model_folder, tmp_path):
    path, size = write_images(tmp_path / "images")["photo.jpg"]
    model = SemanticFPNForSemanticSegmentation.from_pretrained(model_folder)
    expected = segment(model, SemanticFPNImageProcessor.from_pretrained(model_folder), path)[0].numpy()
    np.save(tmp_path / "expected.npy", expected)
    code = textwrap.dedent(
        f"""
        import numpy as np
        from transformers import pipeline
        segmenter = pipeline("image-segmentation", model={str(model_folder)!r}, trust_remote_code=True)
        for part in (segmenter.model, segmenter.image_processor):
            assert type(part).__module__.startswith("transformers_modules"), type(part).__module__
        annotations = segmenter({str(path)!r})
        label2id = {{name: index for index, name in segmenter.model.config.id2label.items()}}
        label_map = np.full({size!r}, -1)
        for annotation in annotations:
            assert annotation["mask"].size == {size[::-1]!r}, annotation["mask"].size
            label_map[np.asarray(annotation["mask"]) > 0] = label2id[annotation["label"]]
        assert np.array_equal(label_map, np.load({str(tmp_path / "expected.npy")!r}))
        print("remote pipeline OK", type(segmenter.image_processor).__name__)
        """
    )
    result = run_without_fpn_seg(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote pipeline OK SemanticFPNImageProcessor" in result.stdout


# ------------------------------------------------------------------ transformers behaviours that fpn_seg/__init__.py works around
# Each test below first shows the transformers 5.25 behaviour without the workaround (if transformers changes it, the
# test fails: the workaround can go), then that the workaround removes its effect.


def test_pipeline_reports_registered_models_as_unsupported_without_the_log_filter(model_folder):
    """transformers' `ImageSegmentationPipeline.__init__` checks the model's class name against its built-in
    `MODEL_FOR_*_SEGMENTATION_MAPPING_NAMES` tables only (`Pipeline.check_model_type` with plain dicts: classes added
    by `AutoModelForSemanticSegmentation.register` are not looked up) and logs an error for our model, which it then
    runs correctly. There is no public way to add a registered model to those tables; `fpn_seg` filters that one
    message on the `transformers.pipelines.base` logger."""
    import logging

    from transformers.utils import logging as transformers_logging

    import fpn_seg

    logger = transformers_logging.get_logger("transformers.pipelines.base")
    (workaround,) = [f for f in logger.filters if isinstance(f, fpn_seg._RegisteredSegmenterFilter)]
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(logging.ERROR)
    logger.addHandler(handler)
    try:
        logger.removeFilter(workaround)
        pipeline("image-segmentation", model=str(model_folder))
        assert any("'SemanticFPNForSemanticSegmentation' is not supported for image-segmentation" in r for r in records)
        records.clear()
        logger.addFilter(workaround)
        pipeline("image-segmentation", model=str(model_folder))
        assert not any("is not supported" in record for record in records)
    finally:
        logger.removeHandler(handler)
        if workaround not in logger.filters:
            logger.addFilter(workaround)


def test_pipeline_asks_to_trust_a_video_processor_without_the_empty_registration(model_folder, monkeypatch):
    """`pipeline()` also tries `AutoVideoProcessor.from_pretrained(folder)` (`ImageSegmentationPipeline` leaves
    `_load_video_processor` unset, so the load is attempted and failures are ignored). Without a video-processor
    entry for our config, transformers derives a remote video processor from the image processor's `auto_map` and
    asks on the terminal whether to trust it; `fpn_seg` registers an empty entry (`video_processor_classes={}`), the
    public `AutoVideoProcessor.register`, so the pipeline goes on without one and without asking."""
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    from fpn_seg import SemanticFPNConfig

    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    monkeypatch.delitem(VIDEO_PROCESSOR_MAPPING._extra_content, SemanticFPNConfig)  # restored after the test
    pipeline("image-segmentation", model=str(model_folder))
    assert prompts, "transformers no longer asks: the empty AutoVideoProcessor registration in fpn_seg can go"
    monkeypatch.undo()
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    prompts.clear()
    pipeline("image-segmentation", model=str(model_folder))
    assert prompts == []
