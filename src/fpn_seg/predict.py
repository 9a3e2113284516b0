"""`fpn-seg predict`: segment image files with a saved Semantic FPN model; write label PNGs and colour overlays.

    fpn-seg predict runs/demo/model street.jpg photos/ "more/**/*.png" --output-dir predictions
    fpn-seg predict runs/demo/model photos/ --output-dir out --mode slide --crop-size 512 1024 --tta --device cuda
    fpn-seg predict runs/demo/onnx photos/ --output-dir out --runtime openvino --precision int8
    fpn-seg predict runs/demo/onnx photos/ --output-dir out --runtime auto     # the fastest correct path here

MODEL is a model folder (`config.json`, `model.safetensors`, `preprocessor_config.json`, as `save_pretrained` writes
them) or a hub id. A folder without `preprocessor_config.json` is used with the processor built from the model's
config (`SemanticFPNImageProcessor.from_model_config`: default test scale (2048, 1024) and the config's label policy);
a note says so. Model code shipped with a folder is only executed with `--trust-remote-code`. The model runs as
`fpn_seg.optimization.optimize_for_inference(model)` makes it (exact float32: BatchNorm folded into the convs,
channels_last, oneDNN convs; the same logits up to float rounding) unless `--no-optimize` is given; on the CPU the
command also keeps freed memory for reuse (`retain_freed_memory()`: no page faults on every forward pass, exact).
MODEL may also be an ONNX folder written by `fpn-seg export`, run on the CPU by ONNX Runtime (the default for such a
folder) or OpenVINO (`--runtime onnxruntime | openvino`, `fpn_seg.deployment.ORTModelForSemanticSegmentation` /
`OVModelForSemanticSegmentation`): `model.onnx` (`--precision fp32`, or `bf16` with OpenVINO on CPUs with AVX512-BF16
or AMX) or `model_quantized.onnx` (`--precision int8`). `--runtime auto` takes the fastest path that passes a short
probe on this machine and says which and why on stderr (`fpn_seg.deployment.load_runtime`); with `--precision fp32`
it keeps to exact paths. `--onnx`, `--int8` and `--bf16` are aliases of `--runtime onnxruntime`, `--precision int8`
and `--precision bf16`.

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
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import write_file_atomically
from .cli import EXIT_DONE, EXIT_FAILED, run_command
from .image_files import (
    ImageInput,
    ImageInputError,
    ImageReadError,
    collect_image_inputs,
    make_stems_distinct,
    raise_pillow_pixel_limit,
    read_image,
)
from .deployment.onnx_folder import PRECISIONS
from .deployment.runtimes import RUNTIME_CHOICES
from .inference import MMSEG_MS_RATIOS, default_stride, model_device_and_dtype, segment
from .model_folders import ModelFolderError
from .optimization import retain_freed_memory
from .visualize import class_pixel_counts, overlay, save_label_png

DEFAULT_MAX_PIXELS = 50_000_000


class PredictError(Exception):
    """A problem with the arguments, the model or the inputs, found before anything is written (exit status 2)."""


def outputs_of(item: ImageInput, output_dir: Path, with_overlay: bool) -> list[Path]:
    """The files an input image produces: the label PNG, then the overlay PNG if `with_overlay`."""
    base = output_dir / item.stem
    names = [f"{base.name}_label.png"] + ([f"{base.name}_overlay.png"] if with_overlay else [])
    return [base.parent / name for name in names]


def load_predict_model(args: argparse.Namespace):
    """MODEL with `--runtime` / `--precision` -> (the model-like object to run, its processor), through
    `fpn_seg.deployment.load_runtime`; `PredictError` when it cannot be loaded. Without `--runtime`: torch for a model
    folder or hub id, ONNX Runtime for an ONNX folder. `--runtime auto` prints its choice and why on stderr. Sets
    `args.bf16` when the choice is torch's bfloat16 autocast."""
    from .deployment import load_runtime
    from .deployment.runtimes import folder_kinds

    runtime = args.runtime or ("torch" if "torch" in folder_kinds(args.model) else "onnxruntime")
    device = resolve_device(args.device) if runtime == "torch" else None
    asked = f"--runtime {runtime}" + (f", --precision {args.precision}" if args.precision else "")
    try:
        model, processor, choice = load_runtime(
            args.model, runtime, args.precision, device=device, optimize=not args.no_optimize,
            trust_remote_code=args.trust_remote_code,
        )  # fmt: skip
    except ModelFolderError as error:
        raise PredictError(str(error)) from None
    except (ValueError, ImportError, OSError) as error:
        raise PredictError(f"MODEL {args.model!r} ({asked}): {error}") from None
    if runtime == "auto":
        print(f"fpn-seg predict: runtime auto chose {choice.summary()}", file=sys.stderr)
    args.bf16 = choice.autocast_bf16
    return model, processor


# ------------------------------------------------------------------------------------------------ model


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
    parser.add_argument("--bf16", action="store_true", help="the same as --precision bf16 (torch: bfloat16 autocast)")
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
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="torch (a model folder or hub id), onnxruntime or openvino (an ONNX folder of fpn-seg export), or auto: "
        "the fastest correct one for this machine, by a short probe (default: torch, or onnxruntime for an ONNX "
        "folder)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (exact: float32 arithmetic), bf16 or int8 (approximate; int8 needs an export with --int8). "
        "Default: fp32, and with --runtime auto any precision (--precision fp32 keeps auto to exact paths)",
    )
    parser.add_argument("--onnx", action="store_true", help="the same as --runtime onnxruntime")
    parser.add_argument("--int8", action="store_true", help="the same as --precision int8")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default %(default)s)"
    )
    return parser


def _check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for alias, name, value in (("--onnx", "runtime", "onnxruntime"), ("--int8", "precision", "int8"),
                               ("--bf16", "precision", "bf16")):  # fmt: skip
        if getattr(args, alias[2:]):
            if getattr(args, name) not in (None, value):
                parser.error(f"{alias} means --{name} {value}; it contradicts --{name} {getattr(args, name)}.")
            setattr(args, name, value)
    if args.runtime in ("onnxruntime", "openvino", "auto"):
        torch_only = [flag for flag, given in (("--no-optimize", args.no_optimize and args.runtime != "auto"),
                                               ("--device", args.device not in (None, "cpu"))) if given]  # fmt: skip
        if torch_only:
            parser.error(
                f"{', '.join(torch_only)} apply to the torch runtime; --runtime {args.runtime} runs on the CPU."
            )
    if args.mode == "slide" and args.crop_size is None:
        parser.error("--mode slide needs --crop-size H W (e.g. --crop-size 512 1024).")
    if args.mode == "whole" and (args.crop_size or args.stride):
        parser.error("--crop-size and --stride apply to --mode slide only.")
    for name in ("crop_size", "stride"):
        if getattr(args, name) and min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} needs two positive sizes; got {getattr(args, name)}.")
    if args.mode == "slide" and args.stride is None:
        args.stride = default_stride(args.crop_size)
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


def _segment_chunk(chunk, model, processor, args, failures) -> list[tuple[ImageInput, torch.Tensor, torch.Tensor]]:
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

    try:
        inputs = make_stems_distinct(collect_image_inputs(args.inputs, args.output_dir))
    except ImageInputError as error:
        raise PredictError(str(error)) from None
    with_overlay = not args.no_overlay
    if not args.overwrite:
        outputs = [path for item in inputs for path in outputs_of(item, args.output_dir, with_overlay)]
        _check_outputs_free(outputs, args.output_dir)
    model, processor = load_predict_model(args)
    device = model_device_and_dtype(model)[0]
    config = model.config
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
                    label_path, *overlay_path = outputs_of(item, args.output_dir, with_overlay)
                    write_file_atomically(label_path, lambda path: save_label_png(label_map, path))
                    if overlay_path:
                        rgb = Image.fromarray(image.permute(1, 2, 0).numpy())  # upright, as segmented
                        picture = overlay(rgb, label_map, config.id2label, args.alpha, ignore_index)
                        write_file_atomically(overlay_path[0], picture.save)
                    pixel_counts += class_pixel_counts(label_map, num_labels)
                    processed += 1
                progress.update(len(chunk))
    finally:
        if retained:
            retain_freed_memory(False)
    elapsed = time.perf_counter() - start
    print(_summary(processed, failures, pixel_counts, config.id2label, elapsed, args.output_dir))
    return EXIT_FAILED if failures else EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg predict` (also `python -m fpn_seg.predict`); returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(args, parser)
    pillow_limit = raise_pillow_pixel_limit(args.max_pixels)
    try:
        return run_command("predict", lambda: run(args), usage=(PredictError,))
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PredictError",
    "build_parser",
    "check_predicted_labels",
    "load_predict_model",
    "main",
    "outputs_of",
    "resolve_device",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
