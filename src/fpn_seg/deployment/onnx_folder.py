"""The ONNX folder that `fpn-seg export` writes, as the runtimes read it: which file serves which precision, and the
one-line errors for a folder that cannot serve a request.

An ONNX folder holds `model.onnx` (float32, BatchNorm folded; run as `fp32`, or as `bf16` by a runtime that computes
in bfloat16), optionally `model_quantized.onnx` (static int8: `int8`), `config.json` and `preprocessor_config.json`.
"""

import os
from pathlib import Path
from typing import Literal

from huggingface_hub.errors import StrictDataclassError
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from ..configuration_semantic_fpn import SemanticFPNConfig

ONNX_FILE_NAME = "model.onnx"
QUANTIZED_FILE_NAME = "model_quantized.onnx"  # optimum's name for a quantized export
Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
# The file each precision runs: bf16 is the float32 model computed in bfloat16 by the runtime.
PRECISION_FILES: dict[str, str] = {"fp32": ONNX_FILE_NAME, "bf16": ONNX_FILE_NAME, "int8": QUANTIZED_FILE_NAME}


class OnnxFolderError(ValueError):
    """A folder that is not an ONNX export of a Semantic FPN model, lacks the file a precision needs, or holds a file
    the runtime cannot load; the message names the folder or file and what to do."""


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`; a `ValueError` listing them otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}.")
    return precision


def onnx_model_path(folder: str | os.PathLike, precision: Precision = "fp32") -> Path:
    """The ONNX file that runs `precision` in an exported folder; an `OnnxFolderError` naming what is missing and how
    to make it otherwise."""
    check_precision(precision)
    folder = Path(folder)
    if not folder.is_dir():
        raise OnnxFolderError(f"{str(folder)!r} is not a folder; expected an ONNX folder written by fpn-seg export.")
    path = folder / PRECISION_FILES[precision]
    if path.is_file():
        return path
    if precision == "int8" and (folder / ONNX_FILE_NAME).is_file():
        raise OnnxFolderError(
            f"{str(folder)!r} has no {QUANTIZED_FILE_NAME} (int8 was asked for; it holds only the float32 "
            f"{ONNX_FILE_NAME}). Export it with: fpn-seg export MODEL_DIR --output-dir {folder} --overwrite --int8 "
            "--calibration-images IMAGES..."
        )
    found = f"a torch model folder ({SAFE_WEIGHTS_NAME})" if (folder / SAFE_WEIGHTS_NAME).is_file() else "no model"
    raise OnnxFolderError(
        f"{str(folder)!r} has no {path.name}: it holds {found}, not an ONNX export. Make one with: fpn-seg export "
        f"MODEL_DIR --output-dir OUT (then use OUT)."
    )


def folder_precisions(folder: str | os.PathLike) -> tuple[str, ...]:
    """The precisions whose file an ONNX folder holds (before asking whether a runtime or the CPU can run them)."""
    folder = Path(folder)
    return tuple(precision for precision in PRECISIONS if (folder / PRECISION_FILES[precision]).is_file())


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` is an ONNX export (holds `model.onnx`), as opposed to a torch model folder or a hub id."""
    return (Path(folder) / ONNX_FILE_NAME).is_file()


def load_export_config(folder: str | os.PathLike, model_file: Path) -> SemanticFPNConfig:
    """The `SemanticFPNConfig` saved beside `model_file` in an ONNX folder; `OnnxFolderError` when it is missing or is
    not a Semantic FPN config."""
    config_file = Path(folder) / CONFIG_NAME
    if not config_file.is_file():
        raise OnnxFolderError(f"{str(folder)!r} has {model_file.name} but no {CONFIG_NAME}; export the folder again.")
    try:
        config = SemanticFPNConfig.from_pretrained(folder)
    except (OSError, ValueError, StrictDataclassError) as error:
        raise OnnxFolderError(f"{config_file}: not a Semantic FPN config ({str(error).splitlines()[0]}).") from None
    if config.model_type != SemanticFPNConfig.model_type:
        raise OnnxFolderError(f"{config_file}: model_type {config.model_type!r}, expected 'semantic_fpn'.")
    return config


__all__ = [
    "ONNX_FILE_NAME",
    "PRECISIONS",
    "PRECISION_FILES",
    "QUANTIZED_FILE_NAME",
    "OnnxFolderError",
    "Precision",
    "check_precision",
    "folder_precisions",
    "is_onnx_folder",
    "load_export_config",
    "onnx_model_path",
]
