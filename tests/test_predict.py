"""`fpn-seg predict` end to end on a tiny saved model and real image files: outputs, modes, refusals, bad inputs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.cli import COMMANDS
from fpn_seg.cli import main as cli_main
from fpn_seg.image_files import collect_image_inputs
from fpn_seg.inference import MMSEG_MS_RATIOS, prepare_model, segment
from fpn_seg.predict import PredictError, check_predicted_labels
from fpn_seg.optimization import is_batch_norm_folded

NUM_LABELS = 4
SCALE = (64, 32)  # a tiny test scale: images of a few dozen pixels stay small


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions: one thread is faster than two on a shared machine, and not at the mercy of its load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model folder saved as `save_pretrained` writes it, with its processor."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    config = tiny_config(num_labels=NUM_LABELS)
    SemanticFPNForSemanticSegmentation(config).save_pretrained(folder)
    SemanticFPNImageProcessor.from_model_config(config, scale=SCALE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir)
    return prepare_model(model), AutoImageProcessor.from_pretrained(model_dir)  # the model as the CLI runs it


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A (H, W, 3) uint8 picture with a few flat regions and noise (not pure noise, not flat)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.float32)
    image[: height // 3] = (90, 140, 220)
    image[height // 3 :] = (110, 110, 110)
    image[height // 2 :, width // 3 : 2 * width // 3] = (30, 160, 40)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """Real image files of several modes, one in a nested folder. Keys: names; values: paths (sizes in `_SIZES`)."""
    root = tmp_path / "photos"
    (root / "day" / "morning").mkdir(parents=True)
    paths = {
        "rgb": root / "street.png",
        "gray": root / "day" / "morning" / "gray.jpg",
        "rgba": root / "day" / "rgba.png",
        "palette": root / "palette.png",
        "gray16": root / "gray16.png",
        "cmyk": root / "cmyk.jpg",
    }
    Image.fromarray(_scene(30, 50, 0)).save(paths["rgb"])
    Image.fromarray(_scene(24, 40, 1)).convert("L").save(paths["gray"], quality=90)
    Image.fromarray(_scene(28, 36, 2)).convert("RGBA").save(paths["rgba"])
    Image.fromarray(_scene(20, 33, 3)).convert("P").save(paths["palette"])
    gray16 = (_scene(22, 30, 4)[:, :, 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(paths["gray16"])
    Image.fromarray(_scene(26, 26, 5)).convert("CMYK").save(paths["cmyk"])
    return paths


def _predict(capsys, *args) -> tuple[int, str, str]:
    status = cli_main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _upright_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as the model sees it (EXIF orientation applied)."""
    from PIL import ImageOps

    with Image.open(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    return height, width


def _check_outputs(image_path: Path, label_path: Path, overlay_path: Path | None, expected: torch.Tensor):
    label = np.asarray(Image.open(label_path))
    assert label.shape == _upright_size(image_path)
    assert label.max() < NUM_LABELS
    np.testing.assert_array_equal(label, expected.numpy())
    if overlay_path is not None:
        with Image.open(overlay_path) as picture:
            assert picture.mode == "RGB"
            assert picture.width > label.shape[1] and picture.height >= label.shape[0]  # the legend is beside it


def test_folders_files_and_globs_keep_structure(tmp_path, capsys, model_dir, loaded, images):
    extra = tmp_path / "loose"
    extra.mkdir()
    Image.fromarray(_scene(18, 30, 6)).save(extra / "one.png")
    Image.fromarray(_scene(18, 30, 7)).save(extra / "two.jpg")
    (extra / "notes.txt").write_text("not an image, and not matched by the folder or the glob")
    out = tmp_path / "out"
    status, stdout, stderr = _predict(
        capsys, model_dir, images["rgb"].parent, f"{extra}/*", images["rgb"], "--output-dir", out
    )
    assert status == 0, stderr
    model, processor = loaded
    expected_stems = {
        images["rgb"]: "street",  # also named directly: segmented once
        images["gray"]: "day/morning/gray",
        images["rgba"]: "day/rgba",
        images["palette"]: "palette",
        images["gray16"]: "gray16",
        images["cmyk"]: "cmyk",
        extra / "one.png": "one",
        extra / "two.jpg": "two",
    }
    for image_path, stem in expected_stems.items():
        (expected,) = segment(model, processor, [image_path])
        _check_outputs(image_path, out / f"{stem}_label.png", out / f"{stem}_overlay.png", expected)
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert len(written) == 2 * len(expected_stems)
    assert f"Segmented {len(expected_stems)} image(s)" in stdout
    assert "Classes seen" in stdout and str(out.resolve()) in stdout


def test_slide_with_batches_and_no_overlay(tmp_path, capsys, model_dir, loaded, images):
    model, processor = loaded
    inputs = [images["rgb"], images["rgba"]]
    out = tmp_path / "out"
    status, _, stderr = _predict(
        capsys, model_dir, *inputs, "--output-dir", out, "--mode", "slide", "--crop-size", 24, 32,
        "--batch-size", 2, "--no-overlay", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, stderr
    # The stride defaults to 2/3 of the crop, as mmseg's (512 -> 341, 1024 -> 683).
    expected = segment(model, processor, inputs, mode="slide", crop_size=(24, 32), stride=(16, 21))
    for image_path, labels in zip(inputs, expected):
        _check_outputs(image_path, out / f"{image_path.stem}_label.png", None, labels)
    assert not list(out.glob("*_overlay.png"))


def test_tta_is_mmseg_multiscale_flip(tmp_path, capsys, model_dir, loaded, images):
    model, processor = loaded
    out = tmp_path / "out"
    status, _, stderr = _predict(capsys, model_dir, images["gray"], "--output-dir", out, "--tta")
    assert status == 0, stderr
    (expected,) = segment(model, processor, [images["gray"]], scales=MMSEG_MS_RATIOS, flip=True)
    _check_outputs(images["gray"], out / "gray_label.png", out / "gray_overlay.png", expected)


def test_no_optimize_runs_the_plain_model(tmp_path, capsys, model_dir, images, monkeypatch):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import fpn_seg.prepared_model

    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    assert not is_batch_norm_folded(model) and is_batch_norm_folded(prepare_model(model))
    optimized = []  # the models that `optimize_for_inference` made
    optimize = fpn_seg.prepared_model.optimize_for_inference

    def counting_optimize(model, **options):
        optimized.append(optimize(model, **options))
        return optimized[-1]

    monkeypatch.setattr(fpn_seg.prepared_model, "optimize_for_inference", counting_optimize)
    inputs = [images["rgb"], images["gray"], images["rgba"]]
    status, _, stderr = _predict(capsys, model_dir, *inputs, "--output-dir", tmp_path / "default", "--no-overlay")
    assert status == 0, stderr
    assert len(optimized) == 1  # once per run, not once per image
    out = tmp_path / "out"
    status, _, stderr = _predict(capsys, model_dir, *inputs, "--output-dir", out, "--no-optimize", "--no-overlay")
    assert status == 0, stderr
    assert len(optimized) == 1
    (expected,) = segment(model, AutoImageProcessor.from_pretrained(model_dir), [images["rgb"]])
    _check_outputs(images["rgb"], out / "street_label.png", None, expected)


def test_exif_rotated_jpeg_gives_upright_outputs(tmp_path, capsys, model_dir, loaded):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it by 90 degrees
    Image.fromarray(_scene(20, 36, 8)).save(path, exif=exif)
    status, _, stderr = _predict(capsys, model_dir, path, "--output-dir", tmp_path / "out", "--bf16")
    assert status == 0, stderr
    with Image.open(tmp_path / "out" / "phone_label.png") as label:
        assert (label.height, label.width) == (36, 20)
    with Image.open(tmp_path / "out" / "phone_overlay.png") as picture:
        assert picture.width > 20


def test_same_stems_in_one_folder_get_their_extension(tmp_path, capsys, model_dir):
    folder = tmp_path / "clash"
    folder.mkdir()
    Image.fromarray(_scene(16, 20, 0)).save(folder / "a.png")
    Image.fromarray(_scene(16, 20, 1)).save(folder / "a.jpg")
    status, _, stderr = _predict(capsys, model_dir, folder, "--output-dir", tmp_path / "out", "--no-overlay")
    assert status == 0, stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a_jpg_label.png", "a_png_label.png"]


def test_stems_that_still_clash_are_refused_by_predict_only(tmp_path, capsys, model_dir):
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        Image.fromarray(_scene(16, 20, 0)).save(tmp_path / name / "a.png")
    files = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"]
    status, _, stderr = _predict(capsys, model_dir, *files, "--output-dir", tmp_path / "out")
    assert status == 2 and "would write the same outputs (a_png_label.png)" in stderr
    # Commands that write nothing per image (export's calibration, the app's examples) take both files.
    assert [item.path for item in collect_image_inputs([str(path) for path in files])] == files


def test_outputs_inside_an_input_folder_are_not_taken_as_inputs(tmp_path, capsys, model_dir, images):
    folder = images["rgb"].parent
    out = folder / "predictions"
    for options in ([], ["--overwrite"]):
        status, stdout, stderr = _predict(capsys, model_dir, folder, f"{folder}/**/*.png", "-o", out, *options)
        assert status == 0, stderr
        assert "Segmented 6 image(s)" in stdout
    assert sorted(path.name for path in out.glob("*_label.png")) == [
        "cmyk_label.png", "gray16_label.png", "palette_label.png", "street_label.png"
    ]  # fmt: skip


def test_predicted_ids_outside_the_config_are_refused():
    check_predicted_labels(torch.tensor([[0, 3]]), 4, Path("a.png"))
    with pytest.raises(PredictError, match="predicted class id 4 for a.png, but its config names 4 classes"):
        check_predicted_labels(torch.tensor([[0, 4]]), 4, Path("a.png"))


def test_existing_outputs_are_not_overwritten_without_the_flag(tmp_path, capsys, model_dir, images):
    out = tmp_path / "out"
    assert _predict(capsys, model_dir, images["rgb"], images["cmyk"], "--output-dir", out)[0] == 0
    (out / "cmyk_label.png").unlink()  # one output missing, the others present: still refused as a whole
    (out / "street_overlay.png").write_bytes(b"kept")
    before = {path: path.read_bytes() for path in out.iterdir()}

    status, _, stderr = _predict(capsys, model_dir, images["rgb"], images["cmyk"], "--output-dir", out)
    assert status == 2
    assert "already exist" in stderr and "--overwrite" in stderr and "street_label.png" in stderr
    assert {path: path.read_bytes() for path in out.iterdir()} == before  # untouched, nothing added

    status, _, stderr = _predict(capsys, model_dir, images["rgb"], images["cmyk"], "--output-dir", out, "--overwrite")
    assert status == 0, stderr
    assert (out / "cmyk_label.png").is_file()
    assert Image.open(out / "street_overlay.png").width > 50
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary files left behind


def test_unreadable_images_are_reported_and_skipped(tmp_path, capsys, model_dir, images):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(_scene(10, 12, 0)).save(folder / "good.png")  # 120 pixels
    (folder / "text.png").write_text("this is a text file named .png")
    (folder / "empty.jpg").write_bytes(b"")
    png = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(_scene(40, 60, 1)).save(tmp_path / "full.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:600])
    Image.fromarray(_scene(12, 12, 2)).save(folder / "big.png")  # 144 pixels, above --max-pixels 130
    Image.fromarray(_scene(1, 1, 3)).save(folder / "tiny.png")  # a 1x1 image works

    out = tmp_path / "out"
    status, stdout, stderr = _predict(capsys, model_dir, folder, "--output-dir", out, "--max-pixels", 130)
    assert status == 1
    assert "Segmented 2 image(s)" in stdout and "5 image(s) failed" in stdout
    failures = {line.split(": ", 1)[0].strip(): line for line in stdout.splitlines() if line.startswith("  ")}
    assert "not an image file" in failures[str(folder / "text.png")]
    assert "not an image file" in failures[str(folder / "empty.jpg")]
    assert "cannot read it" in failures[str(folder / "truncated.png")]
    assert "cannot read it" in failures[str(folder / "truncated.jpg")]
    assert "12x12" in failures[str(folder / "big.png")] and "--max-pixels 130" in failures[str(folder / "big.png")]
    assert np.asarray(Image.open(out / "tiny_label.png")).shape == (1, 1)
    assert (out / "good_label.png").is_file() and not (out / "text_label.png").exists()


@pytest.mark.parametrize(
    "make_model, message",
    [
        (lambda root, model_dir: root / "no_such_model", "no such model folder"),
        (lambda root, model_dir: _copy(model_dir, root / "no_weights", skip="model.safetensors"), "has no weights"),
        (lambda root, model_dir: _copy(model_dir, root / "no_config", skip="config.json"), "has no config.json"),
        (lambda root, model_dir: _copy(model_dir, root / "weights.safetensors", file="model.safetensors"), "is a file"),
    ],
    ids=["missing", "no-weights", "no-config", "a-file"],
)
def test_bad_model_gives_clear_error(tmp_path, capsys, model_dir, images, make_model, message):
    model = make_model(tmp_path, model_dir)
    status, _, stderr = _predict(capsys, model, images["rgb"], "--output-dir", tmp_path / "out")
    assert status == 2
    assert message in stderr and str(model) in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_typo_in_a_relative_model_path_is_not_sent_to_the_hub(tmp_path, capsys, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    status, _, stderr = _predict(capsys, "runs/modle", images["rgb"], "--output-dir", tmp_path / "out")
    assert status == 2 and "'runs/modle': no such model folder (there is a local folder 'runs'" in stderr


def _copy(source: Path, target: Path, skip: str | None = None, file: str | None = None) -> Path:
    if file is not None:
        target.write_bytes((source / file).read_bytes())
        return target
    target.mkdir()
    for path in source.iterdir():
        if path.name != skip:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_processor_config_falls_back_with_a_note(tmp_path, capsys, model_dir, images):
    folder = _copy(model_dir, tmp_path / "no_processor", skip="preprocessor_config.json")
    status, _, stderr = _predict(capsys, folder, images["rgb"], "--output-dir", tmp_path / "out", "--no-overlay")
    assert status == 0, stderr
    assert "no preprocessor_config.json" in stderr and "{'shortest_edge': 1024, 'longest_edge': 2048}" in stderr
    assert np.asarray(Image.open(tmp_path / "out" / "street_label.png")).shape == (30, 50)


def test_a_label_map_given_as_the_image_gets_a_note(tmp_path, capsys, model_dir, images):
    label_map = tmp_path / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.repeat(np.arange(6, dtype=np.uint8), 40).reshape(12, 20)).save(label_map)
    photos = [images[name] for name in ("rgb", "gray", "palette", "gray16")]
    status, _, stderr = _predict(capsys, model_dir, label_map, *photos, "--output-dir", tmp_path / "out")
    assert status == 0, stderr
    assert f"note: {label_map} looks like a label map" in stderr
    assert stderr.count("looks like a label map") == 1  # not the grey, palette or 16-bit photos


def test_input_folder_that_is_the_output_folder_is_named_as_the_cause(tmp_path, capsys, model_dir, images):
    folder = tmp_path / "shots_and_outputs"
    folder.mkdir()
    (folder / "street.png").write_bytes(images["rgb"].read_bytes())
    status, _, stderr = _predict(capsys, model_dir, folder, "--output-dir", folder)
    assert status == 2 and "holds only image files inside --output-dir" in stderr
    assert sorted(path.name for path in folder.iterdir()) == ["street.png"]


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["{tmp}/nothing/*.png"], "matched no image files"),
        (["{tmp}/missing.png"], "no such file or folder"),
        (["{tmp}/empty_folder"], "holds no image files"),
    ],
    ids=["glob", "file", "folder"],
)
def test_inputs_matching_nothing_give_clear_errors(tmp_path, capsys, model_dir, images, inputs, message):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "readme.txt").write_text("no images here")
    inputs = [text.format(tmp=tmp_path) for text in inputs]
    status, _, stderr = _predict(capsys, model_dir, images["rgb"], *inputs, "--output-dir", tmp_path / "out")
    assert status == 2
    assert message in stderr and inputs[0] in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--mode", "slide"], "--mode slide needs --crop-size"),
        (["--crop-size", "16", "16"], "apply to --mode slide only"),
        (["--mode", "slide", "--crop-size", "16", "16", "--stride", "8", "20"], "is larger than --crop-size"),
        (["--alpha", "1.5"], "--alpha must lie in 0..1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--mode", "tiles"], "invalid choice: 'tiles'"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, capsys, model_dir, images, options, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", str(model_dir), str(images["rgb"]), "--output-dir", str(tmp_path / "out"), *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_outputs_get_the_permissions_of_ordinary_files(tmp_path, capsys, model_dir, images):
    umask = os.umask(0o022)
    try:
        status, _, stderr = _predict(capsys, model_dir, images["rgb"], "--output-dir", tmp_path / "out")
    finally:
        os.umask(umask)
    assert status == 0, stderr
    written = sorted((tmp_path / "out").iterdir())
    assert [path.name for path in written] == ["street_label.png", "street_overlay.png"]  # no temporary files left
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in written)


def test_unknown_device_is_a_clear_error(tmp_path, capsys, model_dir, images):
    status, _, stderr = _predict(capsys, model_dir, images["rgb"], "--output-dir", tmp_path / "o", "--device", "gpu0")
    assert status == 2 and "--device 'gpu0'" in stderr
    if not torch.cuda.is_available():
        status, _, stderr = _predict(capsys, model_dir, images["rgb"], "-o", tmp_path / "o", "--device", "cuda")
        assert status == 2 and "CUDA is not available" in stderr


def test_cli_help_and_unknown_command(capsys):
    assert cli_main(["--help"]) == 0
    listing = capsys.readouterr().out
    for command, (_, description) in COMMANDS.items():
        assert f"  {command}" in listing and description in listing
    assert cli_main(["predikt"]) == 2
    assert "Did you mean 'predict'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--help"])
    assert exit_info.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


def _model_with_marked_code(model_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the model folder under a model type transformers does not know, so that only the code it ships can
    load it; that code writes a marker file when it is executed."""
    import json

    _copy(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "marked_semantic_fpn"}))
    marker = folder.parent / f"{folder.name}_code_was_executed"
    code = folder / "modeling_semantic_fpn.py"
    code.write_text(f"open({str(marker)!r}, 'w').close()\n" + code.read_text())
    return folder, marker


def test_code_shipped_with_a_model_folder_runs_only_with_the_flag(tmp_path, capsys, model_dir, images):
    folder, marker = _model_with_marked_code(model_dir, tmp_path / "model")
    status, _, stderr = _predict(capsys, folder, images["rgb"], "--output-dir", tmp_path / "out")
    assert status == 2
    assert str(folder) in stderr and "--trust-remote-code" in stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    # With the flag: see test_console_command_in_a_subprocess (the code is imported from a modules cache in tmp_path).


def test_huge_image_is_refused_with_the_limit_named(tmp_path, capsys, model_dir):
    Image.new("1", (8001, 8001)).save(tmp_path / "huge.png")  # 1-bit: 8 MB in memory, a few kB on disk
    status, stdout, _ = _predict(capsys, model_dir, tmp_path / "huge.png", "--output-dir", tmp_path / "out")
    assert status == 1
    assert "huge.png: 8001x8001 = 64.0 megapixels, above the limit --max-pixels 50000000" in stdout


def test_console_command_in_a_subprocess(tmp_path, model_dir, images):
    """The real command line, on a folder whose own code must run: allowed by --trust-remote-code."""
    folder, marker = _model_with_marked_code(model_dir, tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fpn_seg.cli", "predict", str(folder), str(images["rgba"]), "-o", str(out)]
    result = subprocess.run([*command, "--trust-remote-code"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    assert "Segmented 1 image(s)" in result.stdout
    assert np.asarray(Image.open(out / "rgba_label.png")).shape == (28, 36)
    assert (out / "rgba_overlay.png").is_file()


def _overlay_as_it_was(image: np.ndarray, label_map: np.ndarray, id2label, alpha=0.5, ignore_index=255) -> np.ndarray:
    """The overlay as `fpn-seg predict` drew it before the pipeline (float32 blend, np.unique, PIL paste)."""
    from fpn_seg.visualize import _legend, colorize, palette_for

    palette = palette_for(id2label)
    mask = colorize(label_map, palette, ignore_index).astype(np.float32)
    blended = Image.fromarray(np.clip((1 - alpha) * image.astype(np.float32) + alpha * mask, 0, 255).astype(np.uint8))
    present = [int(c) for c in np.unique(label_map) if 0 <= c < len(palette) and c != ignore_index]
    colours = tuple(tuple(int(v) for v in palette[c]) for c in present)
    legend = Image.fromarray(_legend(tuple(id2label[c] for c in present), colours, blended.height))
    canvas = Image.new("RGB", (blended.width + legend.width, max(blended.height, legend.height)), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (blended.width, 0))
    return np.asarray(canvas)


def test_the_pipeline_writes_the_same_files_as_before(tmp_path, capsys, model_dir, loaded, images):
    """Batches of mixed sizes with an unreadable file in the middle: label PNGs byte for byte as `save_label_png`
    writes `segment`'s label maps, overlays pixel for pixel as they were drawn before; failures listed in order."""
    from fpn_seg.image_files import read_image
    from fpn_seg.visualize import save_label_png

    model, processor = loaded
    folder = tmp_path / "mixed"
    folder.mkdir()
    names = ["a_street.png", "b_broken.png", "c_gray.jpg", "d_rgba.png", "e_cmyk.jpg"]
    sources = [images["rgb"], None, images["gray"], images["rgba"], images["cmyk"]]
    for name, source in zip(names, sources):
        (folder / name).write_bytes(source.read_bytes() if source else b"not an image")
    out = tmp_path / "out"
    status, stdout, stderr = _predict(capsys, model_dir, folder, "-o", out, "--batch-size", 3, "--alpha", 0.4,
                                      "--workers", 2)  # fmt: skip
    assert status == 1, stderr
    assert "Segmented 4 image(s)" in stdout
    assert f"1 image(s) failed and were skipped:\n  {folder / names[1]}: " in stdout
    for name in names[:1] + names[2:]:
        path, stem = folder / name, Path(name).stem
        image = read_image(path, 10**8)
        (expected,) = segment(model, processor, [image])
        save_label_png(expected, tmp_path / "reference.png")
        assert (out / f"{stem}_label.png").read_bytes() == (tmp_path / "reference.png").read_bytes(), name
        reference = _overlay_as_it_was(image.permute(1, 2, 0).numpy(), expected.numpy(), model.config.id2label, 0.4)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_overlay.png")), reference, err_msg=name)


def test_an_image_out_of_memory_even_alone_is_listed_and_the_others_written(tmp_path, capsys, model_dir, images,
                                                                             monkeypatch):  # fmt: skip
    from fpn_seg.prepared_model import PreparedModel

    processor = SemanticFPNImageProcessor(scale=SCALE)
    too_large = processor.test_size(*_upright_size(images["cmyk"]))
    logits = PreparedModel.logits

    def short_of_memory(self, pixel_values, precision="fp32", image_sizes=None):  # the model-call seam
        if len(pixel_values) > 1 or tuple(pixel_values.shape[-2:]) == too_large:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return logits(self, pixel_values, precision, image_sizes)

    monkeypatch.setattr(PreparedModel, "logits", short_of_memory)
    inputs = [images["rgb"], images["cmyk"], images["rgba"]]
    status, stdout, _ = _predict(capsys, model_dir, *inputs, "-o", tmp_path / "out", "--batch-size", 3)
    assert status == 1
    assert f"  {images['cmyk']}: out of memory even alone (26x26); try --mode slide, --precision fp16" in stdout
    assert sorted(path.name for path in (tmp_path / "out").glob("*_label.png")) == ["rgba_label.png",
                                                                                     "street_label.png"]  # fmt: skip


@pytest.mark.parametrize(
    "options, status, message",
    [
        (["--precision", "fp16", "--device", "cpu"], 2, "--precision fp16: precision='fp16' needs a GPU"),
        (["--bf16", "--precision", "fp16"], None, "--bf16 means --precision bf16; it contradicts --precision fp16"),
        (["--workers", "0"], None, "--workers must be at least 1"),
        (["--onnx", "--precision", "fp16"], None, "--precision fp16 apply to the torch runtime"),
    ],
)
def test_precision_and_pipeline_options_are_checked(tmp_path, capsys, model_dir, images, options, status, message):
    argv = ["predict", str(model_dir), str(images["rgb"]), "-o", str(tmp_path / "out"), *options]
    if status is None:  # argparse's usage errors
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli_main(argv) == status
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
