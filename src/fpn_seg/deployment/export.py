"""`fpn-seg export`: a Semantic FPN model -> a self-describing ONNX folder (`model.onnx`, `config.json`,
`preprocessor_config.json`; with `--int8`, also `model_quantized.onnx`).

    fpn-seg export demo_output/model --output-dir demo_output/onnx
    fpn-seg export demo_output/model --output-dir demo_output/onnx --overwrite --int8 --calibration-images "train/*.png"

`model.onnx` is the float32 network with every BatchNorm folded into its conv (exact up to float rounding), exported
with `torch.onnx.export` (the dynamo exporter); input `pixel_values` (batch, 3, height, width), output `logits`
(batch, num_labels, height, width) at the input size, as the torch model returns them; batch, height and width are
dynamic. The export is checked against the torch model on an input whose sides are not multiples of 32 before
anything is written. The folder is written aside and moved in whole (`fpn_seg.atomic`): a failed or interrupted export
leaves the previous folder (or nothing). Exit status: 0 written; 1 the export failed its check; 2 bad arguments,
model or calibration images (nothing written).
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME

from ..atomic import atomic_output_dir, check_output_dir
from ..cli import run_command
from ..image_files import ImageInputError, ImageReadError, collect_image_inputs, read_image
from ..image_processing_semantic_fpn import SemanticFPNImageProcessor
from ..image_reading import image_to_tensor
from ..model_folders import ModelFolderError, load_model
from ..modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from ..optimization import fold_batch_norm, is_batch_norm_folded
from .dependencies import require
from .quantization import CalibrationMethod, QuantizationReport, quantize_onnx
from .onnx_folder import ONNX_FILE_NAME, QUANTIZED_FILE_NAME
from .onnxruntime_model import ORTModelForSemanticSegmentation

DEFAULT_OPSET = 18
DEFAULT_MAX_CALIBRATION_IMAGES = 32
CALIBRATION_MAX_PIXELS = 50_000_000
# The export check: an input whose sides are not multiples of 32 (the neck's and head's resizes then differ from x2).
CHECK_SIZE = (97, 130)
TOLERANCE = 1e-4


class ExportError(ValueError):
    """A model, output folder or calibration set that cannot be exported; the message names it (exit status 2)."""


class ExportCheckError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model's logits (exit status 1; nothing is written)."""


@dataclass
class ExportReport:
    """What [`export_onnx`] wrote: the folder, the check of `model.onnx` against torch, the int8 calibration."""

    output_dir: Path
    opset: int
    max_abs_difference: float
    check_shape: tuple[int, ...]
    seconds: float
    quantization: QuantizationReport | None = None

    def summary(self) -> str:
        lines = [
            f"Exported {self.output_dir / ONNX_FILE_NAME} (opset {self.opset}, BatchNorm folded, dynamic batch / "
            f"height / width) in {self.seconds:.1f} s.",
            f"Check against the torch model on {self.check_shape}: max abs logit difference "
            f"{self.max_abs_difference:.2e} (tolerance {TOLERANCE:g} times the logits' scale).",
        ]
        if self.quantization is not None:
            q = self.quantization
            lines.append(
                f"int8: {self.output_dir / QUANTIZED_FILE_NAME}, calibrated on {q.num_calibration_inputs} image(s) "
                f"({q.calibration_method}, {'per-channel' if q.per_channel else 'per-tensor'} weights; float32 kept "
                f"for {len(q.float_nodes)} node(s): the classifier and the logits resize)."
            )
        return "\n".join(lines)


class _LogitsOnly(nn.Module):
    """The exported graph: `pixel_values` -> `logits`, nothing else."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes that do not concern this model (missing torchvision ops, pytree deprecations)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _exportable_model(model: Any, argument: str) -> SemanticFPNForSemanticSegmentation:
    if not isinstance(model, SemanticFPNForSemanticSegmentation):
        raise ExportError(
            f"{argument}: a {type(model).__name__} is not a Semantic FPN model; fpn-seg export takes a "
            "SemanticFPNForSemanticSegmentation (a folder saved by save_pretrained or fpn-seg convert / train)."
        )
    if is_batch_norm_folded(model):
        raise ExportError(
            f"{argument}: this is a BatchNorm-folded inference copy (made by fold_batch_norm()); pass the original "
            "model: the export folds the BatchNorms itself."
        )
    return model


def export_model_to_onnx(model: SemanticFPNForSemanticSegmentation, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write `model` (BatchNorm folded, eval mode) to the ONNX file `path`: `pixel_values` -> `logits`, dynamic batch,
    height and width."""
    (onnx,) = require("onnx")
    require("onnxscript", purpose="torch.onnx.export (the dynamo exporter)")
    graph = _LogitsOnly(fold_batch_norm(model)).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    example = torch.randn(1, 3, 64, 64)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": dims},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    from .. import __version__

    for key, value in {"producer": f"fpn_seg {__version__}", "batch_norm_folded": "true"}.items():
        proto.metadata_props.add(key=f"fpn_seg.{key}", value=value)
    proto.doc_string = f"Semantic FPN ({model.config.num_labels} classes): pixel_values -> logits at the input size."
    onnx.save(proto, str(path))


def _write_json_config(config, path: Path) -> None:
    """`config.json` / `preprocessor_config.json` without `auto_map`: an ONNX folder runs with fpn_seg's runtime and
    holds none of the torch code files that `auto_map` names."""
    values = json.loads(config.to_json_string())
    values.pop("auto_map", None)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def check_export(model: nn.Module, onnx_folder: Path, size: tuple[int, int] = CHECK_SIZE) -> tuple[float, tuple]:
    """Max abs difference between the torch model's logits and `model.onnx`'s on a random batch of 2 at `size`;
    an `ExportCheckError` above `TOLERANCE` times the logits' scale (at least 1)."""
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.eval()(pixel_values=pixel_values).logits
    onnx_model = ORTModelForSemanticSegmentation.from_pretrained(onnx_folder, "fp32")
    logits = onnx_model(pixel_values).logits
    difference = (logits - expected).abs().max().item()
    limit = TOLERANCE * max(1.0, expected.abs().max().item())
    if not difference <= limit:
        raise ExportCheckError(
            f"The exported {ONNX_FILE_NAME} differs from the torch model by {difference:.3g} (max abs logit "
            f"difference on {tuple(pixel_values.shape)}; allowed {limit:.3g}); nothing was written."
        )
    return difference, tuple(pixel_values.shape)


# ------------------------------------------------------------------------------------------------ calibration


def _calibration_images(images: Any, image_column: str, max_images: int) -> Iterator[torch.Tensor]:
    """The calibration images as uint8 (3, H, W) tensors: from paths / folders / globs (a str, a Path or a list of
    them), a `datasets.Dataset` (its `image_column`), or a list of images; at most `max_images` of them."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if hasattr(images, "column_names"):  # a datasets.Dataset
        if image_column not in images.column_names:
            raise ExportError(
                f"calibration_images: the dataset has no column {image_column!r} (columns: {images.column_names}); "
                "pass image_column=..."
            )
        if len(images) == 0:
            raise ExportError("calibration_images: the dataset is empty; calibration needs at least one image.")
        for index in range(min(len(images), max_images)):
            yield image_to_tensor(images[index][image_column])
        return
    images = list(images)
    if not images:
        raise ExportError("--calibration-images: no images given; calibration needs at least one image.")
    if all(isinstance(item, (str, os.PathLike)) for item in images):
        try:
            files = collect_image_inputs(images, argument="--calibration-images")
        except ImageInputError as error:
            raise ExportError(str(error)) from None
        for item in files[:max_images]:
            try:
                yield read_image(item.path, CALIBRATION_MAX_PIXELS)
            except ImageReadError as error:
                raise ExportError(f"--calibration-images: {item.path}: {error}") from None
        return
    for image in images[:max_images]:
        yield image_to_tensor(image)


def calibration_pixel_values(
    processor: SemanticFPNImageProcessor, images: Iterable[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """The model's inputs for calibration: each uint8 (3, H, W) image resized to the processor's test size and
    normalised, as inference feeds it, one (1, 3, h, w) tensor at a time."""
    for image in images:
        size = processor.test_size(*image.shape[-2:])
        yield processor.normalize_image(processor.resize_image(image, size))[None]


# ------------------------------------------------------------------------------------------------ export


def export_onnx(
    model: str | os.PathLike | SemanticFPNForSemanticSegmentation,
    output_dir: str | os.PathLike,
    *,
    processor: SemanticFPNImageProcessor | None = None,
    int8: bool = False,
    calibration_images: Any = None,
    image_column: str = "image",
    max_calibration_images: int = DEFAULT_MAX_CALIBRATION_IMAGES,
    calibration_method: CalibrationMethod = "minmax",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ExportReport:
    """Export a Semantic FPN to the ONNX folder `output_dir` (see the module docstring); returns an [`ExportReport`].

    Args:
        model: a model folder or hub id (with its `preprocessor_config.json`), or a `SemanticFPNForSemanticSegmentation`
            (then `processor`, default: `SemanticFPNImageProcessor.from_model_config(model.config)`).
        int8: also write `model_quantized.onnx`, static int8 calibrated on `calibration_images` (see
            `fpn_seg.deployment.quantization`).
        calibration_images: image files, folders or glob patterns (str / Path or a list of them), a `datasets.Dataset`
            with an `image_column`, or a list of images (PIL, arrays, tensors); the first `max_calibration_images` are
            used, each after the processor (test-size resize and normalisation).
        overwrite: replace an `output_dir` that is not empty (refused otherwise).
    """
    started = time.perf_counter()
    require("onnx", "onnxruntime", "onnxscript")
    check_output_dir(output_dir, overwrite, refuse=ExportError)  # before the model is read
    if int8 and calibration_images is None:
        raise ExportError("--int8 needs --calibration-images (image files, folders or glob patterns).")
    if not int8 and calibration_images is not None:
        raise ExportError("--calibration-images is used with --int8 only.")
    if max_calibration_images < 1:
        raise ExportError(f"--max-calibration-images must be at least 1; got {max_calibration_images}.")
    if isinstance(model, (str, os.PathLike)):
        try:
            model, processor = load_model(str(model), trust_remote_code, "MODEL_DIR", model_type="semantic_fpn")
        except ModelFolderError as error:
            raise ExportError(str(error)) from None
        argument = "MODEL_DIR"
    else:
        argument = "model"
    model = _exportable_model(model, argument)
    processor = processor or SemanticFPNImageProcessor.from_model_config(model.config)
    calibration = None
    if int8:  # read every calibration image before exporting: a bad one fails at once, with nothing written
        images = list(_calibration_images(calibration_images, image_column, max_calibration_images))
        calibration = calibration_pixel_values(processor, images)
    with atomic_output_dir(output_dir, overwrite, refuse=ExportError) as staging:
        export_model_to_onnx(model, staging / ONNX_FILE_NAME, opset)
        _write_json_config(model.config, staging / CONFIG_NAME)
        _write_json_config(processor, staging / IMAGE_PROCESSOR_NAME)
        difference, shape = check_export(model, staging)
        quantization = None
        if calibration is not None:
            quantization = quantize_onnx(staging / ONNX_FILE_NAME, staging / QUANTIZED_FILE_NAME, calibration,
                                         calibration_method=calibration_method)  # fmt: skip
    return ExportReport(Path(output_dir), opset, difference, shape, time.perf_counter() - started, quantization)


# ------------------------------------------------------------------------------------------------ command


def build_parser(prog: str = "fpn-seg export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a Semantic FPN model folder to ONNX: OUT/model.onnx (float32, BatchNorm folded, dynamic "
        "batch/height/width), config.json and preprocessor_config.json; with --int8 also OUT/model_quantized.onnx.",
        epilog="Exit status: 0 written, 1 the export failed its check against the torch model, 2 bad arguments, "
        "model or calibration images (nothing written).",
    )
    parser.add_argument("model", metavar="MODEL_DIR", help="a saved Semantic FPN model folder (or a hub id)")
    parser.add_argument("--output-dir", "-o", required=True, type=Path, help="the ONNX folder to write")
    parser.add_argument("--int8", action="store_true", help="also write model_quantized.onnx (static int8)")
    parser.add_argument(
        "--calibration-images", nargs="+", metavar="PATH", help="image files, folders or glob patterns (with --int8)"
    )
    parser.add_argument(
        "--max-calibration-images", type=int, default=DEFAULT_MAX_CALIBRATION_IMAGES,
        help="calibrate on the first N images (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that is not empty")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow running model code shipped with it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg export` (also `python -m fpn_seg.deployment.export`); returns the exit status."""
    args = build_parser().parse_args(argv)

    def work() -> None:
        report = export_onnx(
            args.model,
            args.output_dir,
            int8=args.int8,
            calibration_images=args.calibration_images,
            max_calibration_images=args.max_calibration_images,
            opset=args.opset,
            overwrite=args.overwrite,
            trust_remote_code=args.trust_remote_code,
        )
        print(report.summary())

    return run_command("export", work, usage=(ExportError,), failed=(ExportCheckError,))


__all__ = [
    "ExportCheckError",
    "ExportError",
    "ExportReport",
    "build_parser",
    "calibration_pixel_values",
    "export_onnx",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
