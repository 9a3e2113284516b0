"""`fpn-seg predict`: segment image files with a saved Semantic FPN model; write label PNGs and colour overlays.

    fpn-seg predict runs/demo/model street.jpg photos/ "more/**/*.png" --output-dir predictions
    fpn-seg predict runs/demo/model photos/ --output-dir out --mode slide --crop-size 512 1024 --tta --device cuda
    fpn-seg predict runs/demo/onnx photos/ --output-dir out --runtime openvino --precision int8
    fpn-seg predict runs/demo/onnx photos/ --output-dir out --runtime auto

MODEL is a model folder (`config.json`, `model.safetensors`, `preprocessor_config.json`, as `save_pretrained` writes
them) or a hub id. A folder without `preprocessor_config.json` is used with the processor built from the model's
config (`SemanticFPNImageProcessor.from_model_config`: default test scale (2048, 1024) and the config's label policy);
a note says so. Model code shipped with a folder is only executed with `--trust-remote-code`. The model runs through
`fpn_seg.SemanticSegmenter`, the library's one inference path, as an exact optimised copy (float32: BatchNorm folded
into the convs, channels_last; oneDNN convs on the CPU, CUDA graphs for repeated image sizes on a GPU; the same
logits up to float rounding) unless `--no-optimize` is given; `--precision fp16` / `bf16` runs it under autocast. On
the CPU the command also keeps freed memory for reuse (`retain_freed_memory()`: no page faults on every forward
pass, exact).
MODEL may also be an ONNX folder written by `fpn-seg export`, run on the CPU by ONNX Runtime (the default for such a
folder) or OpenVINO (`--runtime onnxruntime | openvino`, `fpn_seg.deployment.ORTModelForSemanticSegmentation` /
`OVModelForSemanticSegmentation`): `model.onnx` (`--precision fp32`, or `bf16` with OpenVINO on CPUs with AVX512-BF16
or AMX) or `model_quantized.onnx` (`--precision int8`). `--runtime auto` takes the fastest path that passes a short
probe on this machine and says which and why on stderr (`fpn_seg.deployment.load_runtime`); with `--precision fp32`
it keeps to exact paths. `--onnx`, `--int8` and `--bf16` are aliases of `--runtime onnxruntime`, `--precision int8`
and `--precision bf16`. Whatever runs, it runs through the same `SemanticSegmenter`.

INPUTS are image files (taken as given), folders (searched recursively for image extensions) and glob patterns
(`**` allowed; matching files with image extensions). The work is a pipeline (`fpn_seg.predict_pipeline`): threads
decode the images ahead of the model, `--batch-size` images go through the model at once on its device, and
threads write the PNGs while the next batch runs. Outputs per image, under `--output-dir`:

    <stem>_label.png     class ids (8-bit, 16-bit above 255 classes), the original image size
    <stem>_overlay.png   the image blended with the class colours, with a legend (unless --no-overlay); written
                         with Huffman coding only (fast; OpenCV's encoder when installed)

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

from .cli import EXIT_DONE, EXIT_FAILED, run_command
from .image_files import (
    ImageInput,
    ImageInputError,
    collect_image_inputs,
    make_stems_distinct,
    raise_pillow_pixel_limit,
)
from .model_folders import ModelFolderError, load_model
from .optimization import retain_freed_memory
from .predict_pipeline import PredictPipeline, PredictResult, default_workers
from .segmenter import MMSEG_MS_RATIOS, SemanticSegmenter, default_stride

# --runtime: "torch", the ONNX runtimes and "auto" (fpn_seg.deployment.runtimes.RUNTIME_CHOICES, written here so that
# the command's help needs no import of the deployment package); --precision: the torch autocast precisions and int8.
RUNTIME_CHOICES = ("torch", "onnxruntime", "openvino", "auto")
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8")

DEFAULT_MAX_PIXELS = 50_000_000


class PredictError(Exception):
    """A problem with the arguments, the model or the inputs, found before anything is written (exit status 2)."""


def outputs_of(item: ImageInput, output_dir: Path, with_overlay: bool) -> list[Path]:
    """The files an input image produces: the label PNG, then the overlay PNG if `with_overlay`."""
    base = output_dir / item.stem
    names = [f"{base.name}_label.png"] + ([f"{base.name}_overlay.png"] if with_overlay else [])
    return [base.parent / name for name in names]


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
    parser.add_argument(
        "--runtime", choices=RUNTIME_CHOICES,
        help="torch (a model folder or hub id), onnxruntime or openvino (an ONNX folder of fpn-seg export, on the "
        "CPU), or auto: the fastest correct one for this machine, by a short probe (default: torch, or onnxruntime "
        "for an ONNX folder)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISION_CHOICES,
        help="fp32 (exact), fp16 (torch: float16 autocast, GPUs), bf16 (torch: bfloat16 autocast; OpenVINO: on CPUs "
        "with bf16) or int8 (an ONNX folder's model_quantized.onnx) (default: fp32; with auto: any)",
    )  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass on the device")
    parser.add_argument(
        "--no-cuda-graphs", action="store_true",
        help="on a GPU, run every call eagerly (default: CUDA graphs replay repeated image sizes)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=default_workers(),
        help="threads decoding images and threads writing PNGs, each (default: the CPUs available, %(default)s)",
    )  # fmt: skip
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
                                               ("--device", args.device not in (None, "cpu")),
                                               ("--precision fp16", args.precision == "fp16"),
                                               ("--no-cuda-graphs", args.no_cuda_graphs)) if given]  # fmt: skip
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
    if args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}.")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must lie in 0..1; got {args.alpha}.")
    if args.max_pixels < 1:
        parser.error(f"--max-pixels must be positive; got {args.max_pixels}.")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output-dir {str(args.output_dir)!r} is a file, not a folder.")


def load_segmenter(args: argparse.Namespace) -> SemanticSegmenter:
    """MODEL with `--runtime` / `--precision` / `--device`, ready to segment: the torch model prepared once for the
    device and precision asked for, or an ONNX export in ONNX Runtime / OpenVINO (`fpn_seg.deployment.load_runtime`;
    `--runtime auto` prints its choice and why on stderr), each behind the one `SemanticSegmenter`. Without
    `--runtime`: torch for a model folder or hub id, ONNX Runtime for an ONNX folder. `PredictError` when it cannot be
    loaded or run as asked."""
    from .deployment.runtimes import check_torch_request, folder_kinds

    runtime = args.runtime or ("torch" if "torch" in folder_kinds(args.model) else "onnxruntime")
    precision = args.precision
    if runtime == "torch":
        try:
            check_torch_request(args.model, precision)
        except ValueError as error:
            raise PredictError(f"MODEL {args.model!r} (--runtime torch): {error}") from None
        device = resolve_device(args.device)
        try:
            model, processor = load_model(args.model, args.trust_remote_code)
        except ModelFolderError as error:
            raise PredictError(str(error)) from None
    else:
        model, processor, choice = _load_exported(args, runtime)
        device = torch.device("cpu")
        if choice.runtime != "torch":
            return SemanticSegmenter(model, processor, optimize=False)  # it runs at the precision it was loaded with
        precision = choice.precision
    if args.no_optimize:
        model = model.to(device)  # run as given, where it is
    try:
        return SemanticSegmenter(
            model, processor, device=device, precision=precision or "fp32", optimize=not args.no_optimize,
            cuda_graphs=False if args.no_cuda_graphs else None,
        )  # fmt: skip
    except ValueError as error:  # e.g. --precision fp16 on the CPU
        raise PredictError(f"--precision {precision}: {error}") from None


def _load_exported(args: argparse.Namespace, runtime: str):
    """`fpn_seg.deployment.load_runtime` for `--runtime onnxruntime | openvino | auto`: (model, processor, choice)."""
    from .deployment import load_runtime

    asked = f"--runtime {runtime}" + (f", --precision {args.precision}" if args.precision else "")
    try:
        model, processor, choice = load_runtime(
            args.model, runtime, args.precision, optimize=not args.no_optimize, trust_remote_code=args.trust_remote_code
        )
    except ModelFolderError as error:
        raise PredictError(str(error)) from None
    except (ValueError, ImportError, OSError) as error:
        raise PredictError(f"MODEL {args.model!r} ({asked}): {error}") from None
    if runtime == "auto":
        print(f"fpn-seg predict: runtime auto chose {choice.summary()}", file=sys.stderr)
    return model, processor, choice


def make_pipeline(args: argparse.Namespace, segmenter: SemanticSegmenter) -> PredictPipeline:
    """The processing loop of the command line `args` around a loaded `segmenter`."""
    with_overlay = not args.no_overlay
    num_labels = segmenter.model.config.num_labels
    return PredictPipeline(
        segmenter,
        outputs_of=lambda item: outputs_of(item, args.output_dir, with_overlay),
        check_labels=lambda label_map, path: check_predicted_labels(label_map, num_labels, path),
        segment_options={"mode": args.mode, "crop_size": args.crop_size, "stride": args.stride,
                         "scales": MMSEG_MS_RATIOS if args.tta else None, "flip": args.tta},  # fmt: skip
        batch_size=args.batch_size,
        with_overlay=with_overlay,
        alpha=args.alpha,
        max_pixels=args.max_pixels,
        workers=args.workers,
    )


def predict_images(args: argparse.Namespace, segmenter: SemanticSegmenter, inputs: list[ImageInput]) -> PredictResult:
    """Segment `inputs` and write their PNGs as the command does (with its progress bar and process settings)."""
    from tqdm.auto import tqdm

    device = segmenter.device
    # This process runs the model and little else: keep freed memory for the next forward (see benchmarks/README.md);
    # on a GPU, let cuDNN pick the fastest kernels for each image size.
    retained = device.type == "cpu" and not args.no_optimize and retain_freed_memory()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark or device.type == "cuda"
    try:
        with tqdm(total=len(inputs), unit="image", desc="fpn-seg predict", disable=None) as progress:
            return make_pipeline(args, segmenter).run(inputs, progress)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if retained:
            retain_freed_memory(False)


def run(args: argparse.Namespace) -> int:
    """Run the command on parsed, checked arguments; returns the exit status (0, or 1 when some images failed)."""
    try:
        inputs = make_stems_distinct(collect_image_inputs(args.inputs, args.output_dir))
    except ImageInputError as error:
        raise PredictError(str(error)) from None
    if not args.overwrite:
        outputs = [path for item in inputs for path in outputs_of(item, args.output_dir, not args.no_overlay)]
        _check_outputs_free(outputs, args.output_dir)
    segmenter = load_segmenter(args)
    start = time.perf_counter()
    result = predict_images(args, segmenter, inputs)
    elapsed = time.perf_counter() - start
    id2label = segmenter.model.config.id2label
    print(_summary(result.processed, result.failures, result.pixel_counts, id2label, elapsed, args.output_dir))
    return EXIT_FAILED if result.failures else EXIT_DONE


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed and checked (argparse's usage errors exit with 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(args, parser)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg predict` (also `python -m fpn_seg.predict`); returns the exit status (see the module docstring)."""
    args = parse_arguments(argv)
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
    "load_segmenter",
    "main",
    "make_pipeline",
    "outputs_of",
    "parse_arguments",
    "predict_images",
    "resolve_device",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
