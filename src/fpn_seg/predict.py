"""`fpn-seg predict`: segment image files with a saved Semantic FPN model; write label PNGs and colour overlays.

    fpn-seg predict runs/demo/model street.jpg photos/ "more/**/*.png" --output-dir predictions
    fpn-seg predict runs/demo/model photos/ --output-dir out --mode slide --crop-size 512 1024 --tta --device cuda

MODEL is a model folder (`config.json`, `model.safetensors`, `preprocessor_config.json`, as `save_pretrained` writes
them) or a hub id. A folder without `preprocessor_config.json` is used with the processor built from the model's
config (`SemanticFPNImageProcessor.from_model_config`: default test scale (2048, 1024) and the config's label policy);
a note says so. Model code shipped with a folder is only executed with `--trust-remote-code`. The model runs as
`fpn_seg.optimization.optimize_for_inference(model)` makes it (exact float32: BatchNorm folded into the convs,
channels_last, oneDNN convs; the same logits up to float rounding) unless `--no-optimize` is given; on the CPU the
command also keeps freed memory for reuse (`retain_freed_memory()`: no page faults on every forward pass, exact).

INPUTS are image files (taken as given), folders (searched recursively for image extensions) and glob patterns
(`**` allowed; matching files with image extensions). Outputs per image, under `--output-dir`:

    <stem>_label.png     class ids (8-bit, 16-bit above 255 classes), the original image size
    <stem>_overlay.png   the image blended with the class colours, with a legend (unless --no-overlay)

Files inside a folder (or below a glob's fixed prefix) keep their sub-folders. Existing outputs are never replaced
without `--overwrite`: the command then stops before writing anything. Images that cannot be read are reported by name,
skipped, and listed at the end. Exit status: 0 all images segmented; 1 some images failed; 2 bad arguments, model or
inputs (nothing written).
"""

import argparse
import glob
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .atomic import write_file_atomically
from .image_processing_semantic_fpn import SemanticFPNImageProcessor, image_to_tensor
from .inference import MMSEG_MS_RATIOS, prepare_model, segment
from .optimization import retain_freed_memory
from .visualize import overlay, save_label_png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)  # fmt: skip
_EXTENSIONS_TEXT = ", ".join(IMAGE_EXTENSIONS)
PROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_MAX_PIXELS = 50_000_000
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class PredictError(Exception):
    """A problem with the arguments, the model or the inputs, found before anything is written (exit status 2)."""


class ImageReadError(Exception):
    """One input image cannot be used; it is skipped and listed in the summary."""


@dataclass
class PredictInput:
    """One image to segment: its `path` and its outputs' location `stem` relative to the output folder (no suffix)."""

    path: Path
    stem: Path

    def outputs(self, output_dir: Path, with_overlay: bool) -> list[Path]:
        """The files this image produces: the label PNG, then the overlay PNG if `with_overlay`."""
        base = output_dir / self.stem
        names = [f"{base.name}_label.png"] + ([f"{base.name}_overlay.png"] if with_overlay else [])
        return [base.parent / name for name in names]


# ------------------------------------------------------------------------------------------------ inputs


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard (where the relative output paths start)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand_input(text: str, skip_folder: Path | None = None) -> list[PredictInput]:
    """One INPUT argument -> the images it names (a file, a folder searched recursively, or a glob pattern); files
    found in a folder or by a pattern are left out when they lie inside `skip_folder` (the output folder)."""
    path = Path(text).expanduser()
    if path.is_file():
        return [PredictInput(path, Path(path.stem))]
    if path.is_dir():
        files = _images_outside(sorted(path.rglob("*")), skip_folder, f"INPUT folder {text!r} holds")
        return [PredictInput(file, file.relative_to(path).with_suffix("")) for file in files]
    if glob.has_magic(text):
        base = _glob_base(os.path.expanduser(text))
        matches = sorted(Path(match) for match in glob.glob(os.path.expanduser(text), recursive=True))
        files = _images_outside(matches, skip_folder, f"INPUT pattern {text!r} matched")
        return [PredictInput(file, file.relative_to(base).with_suffix("")) for file in files]
    raise PredictError(f"INPUT {text!r}: no such file or folder (and not a glob pattern).")


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _images_outside(files: list[Path], skip_folder: Path | None, what: str) -> list[Path]:
    """The image files of `files` outside `skip_folder`; a `PredictError` starting with `what` when none is left."""
    images = [file for file in files if _is_image_file(file)]
    kept = [file for file in images if not _inside(file, skip_folder)]
    if not images:
        raise PredictError(f"{what} no image files (extensions {_EXTENSIONS_TEXT}).")
    if not kept:
        raise PredictError(
            f"{what} only image files inside --output-dir {str(skip_folder)!r}, which are skipped (they may be "
            "earlier outputs); write the outputs to another folder."
        )
    return kept


def collect_inputs(inputs: Sequence[str], output_dir: Path | None = None) -> list[PredictInput]:
    """Expand the INPUT arguments into images with distinct output stems, in the order given.

    Folders and patterns do not pick up files inside `output_dir` (earlier outputs, when it lies inside an input
    folder); files named directly are always taken.
    The same file named twice is taken once. Files whose outputs would share a name (`a.png` and `a.jpg` in one
    folder) get their extension in the stem (`a_png`, `a_jpg`); a clash that remains raises a `PredictError`.
    """
    images, seen = [], set()
    for text in inputs:
        for item in _expand_input(text, output_dir):
            if item.path.resolve() not in seen:
                seen.add(item.path.resolve())
                images.append(item)
    by_stem: dict[Path, list[PredictInput]] = {}
    for item in images:
        by_stem.setdefault(item.stem, []).append(item)
    for clashing in (group for group in by_stem.values() if len(group) > 1):
        for item in clashing:
            item.stem = item.stem.with_name(f"{item.stem.name}_{item.path.suffix.lstrip('.').lower()}")
    final: dict[Path, PredictInput] = {}
    for item in images:
        if item.stem in final:
            raise PredictError(
                f"{final[item.stem].path} and {item.path} would write the same outputs ({item.stem}_label.png); "
                "run them separately with different --output-dir."
            )
        final[item.stem] = item
    return images


def _looks_like_label_map(image: Image.Image, max_values: int = 40) -> bool:
    """Whether a decoded image is probably a label map given by mistake: a single-channel grey (8 or 16-bit) picture
    with at most `max_values` distinct values (Cityscapes label ids: 34 and 255; grey photos have hundreds). Palette
    images are left out: few-colour GIFs and PNGs are photos too."""
    if image.mode not in ("L", "I", "I;16") or image.width * image.height < 64:
        return False
    return len(np.unique(np.asarray(image))) <= max_values


def read_image(path: Path, max_pixels: int) -> torch.Tensor:
    """An image file -> (3, H, W) uint8 RGB tensor (any mode, EXIF orientation applied); `ImageReadError` naming the
    file and the reason when it is not a readable image or holds more than `max_pixels` pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                pixels = width * height
                size = f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels} pixels"
                raise ImageReadError(
                    f"{width}x{height} = {size}, above the limit --max-pixels "
                    f"{max_pixels} (the class scores at full size take num_labels x 4 bytes per pixel); pass a larger "
                    "--max-pixels to segment it."
                )
            image.load()
            if _looks_like_label_map(image):
                print(
                    f"note: {path} looks like a label map (one channel, few distinct values), not a photo; it is "
                    "segmented as a grey picture.",
                    file=sys.stderr,
                )
            return image_to_tensor(image)
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"refused by Pillow's decompression-bomb limit: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageReadError("not an image file Pillow can read") from error
    except (OSError, ValueError, TypeError, SyntaxError) as error:  # truncated data, broken headers, odd modes
        raise ImageReadError(f"cannot read it: {error}") from error


# ------------------------------------------------------------------------------------------------ model


def _check_model_folder(folder: Path) -> bool:
    """Raise a `PredictError` naming what a model folder lacks; returns whether it has a processor config."""
    if not folder.is_dir():
        raise PredictError(
            f"MODEL {str(folder)!r} is a file; expected a model folder (config.json + weights) or a hub id."
        )
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[:3])})")
    if missing:
        raise PredictError(
            f"MODEL folder {str(folder)!r} has no {' and no '.join(missing)}: it is not a saved model. Save one with "
            "model.save_pretrained(folder) and processor.save_pretrained(folder)."
        )
    return (folder / PROCESSOR_FILE).is_file()


def load_model(name: str, trust_remote_code: bool = False) -> tuple[torch.nn.Module, SemanticFPNImageProcessor]:
    """A model folder or hub id -> (model in eval mode on the CPU, image processor); `PredictError` when it cannot be
    loaded. Without a `preprocessor_config.json` the processor is built from the config and a note is printed."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    folder = Path(name).expanduser()
    if folder.exists():
        has_processor = _check_model_folder(folder)
        source = str(folder)
    elif not _HUB_ID.match(name):
        raise PredictError(f"MODEL {name!r}: no such model folder (and not a hub id like 'org/name').")
    elif Path(name.split("/")[0]).is_dir():  # `runs/modle`: a typo in a local path, not the hub namespace `runs`
        raise PredictError(
            f"MODEL {name!r}: no such model folder (there is a local folder {name.split('/')[0]!r}, so it is not "
            "taken as a hub id); check the path."
        )
    else:
        has_processor, source = None, name
    where = f"model folder {source!r}" if folder.exists() else f"hub model {source!r}"
    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        hint = " Pass --trust-remote-code if you trust the code it ships." if "trust_remote_code" in str(error) else ""
        raise PredictError(f"Cannot load the {where}: {error}{hint}") from error
    processor = None
    if has_processor is not False:  # a folder with preprocessor_config.json, or a hub id that may have one
        try:
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError) as error:
            if has_processor or not isinstance(error, OSError):
                raise PredictError(f"Cannot load the image processor of the {where}: {error}") from error
    if processor is None:
        processor = SemanticFPNImageProcessor.from_model_config(model.config)
        print(
            f"note: the {where} has no {PROCESSOR_FILE}; using SemanticFPNImageProcessor.from_model_config(config): "
            f"test scale {processor.scale}, mmseg's mean/std, the config's label policy.",
            file=sys.stderr,
        )
    if not all(hasattr(processor, method) for method in ("test_size", "resize_image", "normalize_image")):
        raise PredictError(
            f"The {where} has a {type(processor).__name__}; fpn-seg predict needs a SemanticFPNImageProcessor "
            "(a Semantic FPN model)."
        )
    return model.eval(), processor


def resolve_device(name: str | None) -> torch.device:
    """`--device` -> a usable `torch.device` ("cuda" when available and no device is named, else "cpu")."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise PredictError(f"--device {name!r} is not a device torch knows (e.g. cpu, cuda, cuda:1, mps).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(
            f"--device {name}: CUDA is not available here (torch {torch.__version__}); use --device cpu."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PredictError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PredictError(f"--device {name}: MPS is not available here; use --device cpu.")
    return device


# ------------------------------------------------------------------------------------------------ outputs


def check_predicted_labels(label_map: torch.Tensor, num_labels: int, path: Path) -> None:
    """The predicted ids must be class ids of the config (`id2label`); otherwise the classifier and the config
    disagree and the label PNGs would be silently wrong."""
    if label_map.numel() and int(label_map.max()) >= num_labels:
        raise PredictError(
            f"The model predicted class id {int(label_map.max())} for {path}, but its config names {num_labels} "
            "classes (id2label): its classifier and config disagree. Re-save the model with a matching config."
        )


def _check_outputs_free(outputs: list[Path], output_dir: Path) -> None:
    existing = [path for path in outputs if path.exists()]
    if existing:
        shown = "\n  ".join(str(path) for path in existing[:5]) + ("\n  ..." if len(existing) > 5 else "")
        raise PredictError(
            f"{len(existing)} of the output files already exist in {output_dir}, e.g.\n  {shown}\nNothing was written. "
            "Pass --overwrite to replace them, or choose another --output-dir."
        )


def _summary(
    processed: int, failures: list[tuple[Path, str]], pixel_counts: np.ndarray, id2label, seconds: float, output_dir
) -> str:
    lines = [f"Segmented {processed} image(s) in {seconds:.1f} s ({seconds / max(processed, 1):.3f} s per image, "
             "model loading not counted)."]  # fmt: skip
    if pixel_counts.sum():
        shares = pixel_counts / pixel_counts.sum()
        seen = [f"{id2label[index]} {100 * shares[index]:.1f}%" for index in np.argsort(-shares) if pixel_counts[index]]
        lines.append(f"Classes seen ({len(seen)} of {len(pixel_counts)}, share of pixels): {', '.join(seen)}")
    lines.append(f"Outputs: {output_dir.resolve()}")
    if failures:
        lines.append(f"{len(failures)} image(s) failed and were skipped:")
        lines += [f"  {path}: {reason}" for path, reason in failures]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command


def build_parser(prog: str = "fpn-seg predict") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Segment images with a Semantic FPN model: <stem>_label.png (class ids) and <stem>_overlay.png "
        "(colours + legend) per image.",
        epilog="Exit status: 0 all images segmented, 1 some images failed (listed at the end), 2 bad arguments, model "
        "or inputs (nothing written).",
    )
    parser.add_argument("model", metavar="MODEL", help="a saved model folder or a hub id")
    parser.add_argument("inputs", metavar="INPUTS", nargs="+", help="image files, folders (recursive) or glob patterns")
    parser.add_argument("--output-dir", "-o", required=True, type=Path, help="where the PNGs go (created if missing)")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole", help="mmseg's inference mode")
    parser.add_argument("--crop-size", nargs=2, type=int, metavar=("H", "W"), help="slide window (required with slide)")
    parser.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), help="slide step (default 2/3 of the crop)")
    parser.add_argument("--tta", action="store_true", help=f"multi-scale {MMSEG_MS_RATIOS} + flip, as mmseg's ms+flip")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps... (default: cuda when available, else cpu)")
    parser.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images only)")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the colours in the overlay (0..1)")
    parser.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--no-optimize",
        action="store_true",
        help="run the plain eager model (default: BatchNorm folded into the convs, channels_last, oneDNN convs: the "
        "same logits up to float rounding, faster; on the CPU, freed memory is also kept for reuse while it runs)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow running model code shipped with MODEL")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default %(default)s)"
    )
    return parser


def _check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.mode == "slide" and args.crop_size is None:
        parser.error("--mode slide needs --crop-size H W (e.g. --crop-size 512 1024).")
    if args.mode == "whole" and (args.crop_size or args.stride):
        parser.error("--crop-size and --stride apply to --mode slide only.")
    for name in ("crop_size", "stride"):
        if getattr(args, name) and min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} needs two positive sizes; got {getattr(args, name)}.")
    if args.mode == "slide" and args.stride is None:
        args.stride = [max(1, round(side * 2 / 3)) for side in args.crop_size]  # mmseg's 512 -> 341, 1024 -> 683
    if args.mode == "slide" and any(step > side for step, side in zip(args.stride, args.crop_size)):
        parser.error(
            f"--stride {args.stride} is larger than --crop-size {args.crop_size}: some pixels would get no "
            "prediction; use at most the crop size (default: 2/3 of it)."
        )
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1; got {args.batch_size}.")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must lie in 0..1; got {args.alpha}.")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be positive; got {args.max_pixels}.")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir {str(args.output_dir)!r} is a file, not a folder.")


def _segment_chunk(chunk, model, processor, args, failures) -> list[tuple[PredictInput, torch.Tensor, torch.Tensor]]:
    """Read the images of `chunk` (failures recorded and skipped) and segment them: (input, image, label map)."""
    readable = []
    for item in chunk:
        try:
            readable.append((item, read_image(item.path, args.max_pixels)))
        except ImageReadError as error:
            failures.append((item.path, str(error)))
    if not readable:
        return []
    try:
        label_maps = segment(
            model,
            processor,
            [image for _, image in readable],
            mode=args.mode,
            crop_size=args.crop_size,
            stride=args.stride,
            scales=MMSEG_MS_RATIOS if args.tta else None,
            flip=args.tta,
            batch_size=args.batch_size,
            bf16=args.bf16,
            optimize=False,  # the model is already prepared by `run`
        )
    except torch.OutOfMemoryError as error:
        hint = "try --batch-size 1, --mode slide, or a smaller --max-pixels"
        failures.extend((item.path, f"out of memory ({hint}): {error}") for item, _ in readable)
        return []
    return [(item, image, label_map) for (item, image), label_map in zip(readable, label_maps)]


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed, checked arguments; returns the exit status (0, or 1 when some images failed)."""
    from tqdm.auto import tqdm

    inputs = collect_inputs(args.inputs, args.output_dir)
    with_overlay = not args.no_overlay
    if not args.overwrite:
        outputs = [path for item in inputs for path in item.outputs(args.output_dir, with_overlay)]
        _check_outputs_free(outputs, args.output_dir)
    device = resolve_device(args.device)
    model, processor = load_model(args.model, args.trust_remote_code)
    config = model.config
    model = prepare_model(model.to(device), optimize=not args.no_optimize)
    num_labels = config.num_labels
    ignore_index = getattr(config, "ignore_index", 255)

    failures: list[tuple[Path, str]] = []
    pixel_counts = np.zeros(num_labels, dtype=np.int64)
    processed, start = 0, time.perf_counter()
    # This process runs the model and little else: keep freed memory for the next forward (see benchmarks/README.md).
    retained = device.type == "cpu" and not args.no_optimize and retain_freed_memory()
    try:
        with tqdm(total=len(inputs), unit="image", desc="fpn-seg predict", disable=None) as progress:
            for first in range(0, len(inputs), args.batch_size):
                chunk = inputs[first : first + args.batch_size]
                for item, image, label_map in _segment_chunk(chunk, model, processor, args, failures):
                    check_predicted_labels(label_map, num_labels, item.path)
                    label_path, *overlay_path = item.outputs(args.output_dir, with_overlay)
                    write_file_atomically(label_path, lambda path: save_label_png(label_map, path))
                    if overlay_path:
                        rgb = Image.fromarray(image.permute(1, 2, 0).numpy())  # upright, as segmented
                        picture = overlay(rgb, label_map, config.id2label, args.alpha, ignore_index)
                        write_file_atomically(overlay_path[0], picture.save)
                    pixel_counts += np.bincount(label_map.flatten().numpy(), minlength=num_labels)[:num_labels]
                    processed += 1
                progress.update(len(chunk))
    finally:
        if retained:
            retain_freed_memory(False)
    elapsed = time.perf_counter() - start
    print(_summary(processed, failures, pixel_counts, config.id2label, elapsed, args.output_dir))
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg predict` (also `python -m fpn_seg.predict`); returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(args, parser)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and args.max_pixels > pillow_limit:
        Image.MAX_IMAGE_PIXELS = args.max_pixels  # our own limit, named in the message, decides
    try:
        return run(args)
    except PredictError as error:
        print(f"fpn-seg predict: error: {error}", file=sys.stderr)
        return 2
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "PredictError",
    "PredictInput",
    "build_parser",
    "check_predicted_labels",
    "collect_inputs",
    "load_model",
    "main",
    "read_image",
    "resolve_device",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
