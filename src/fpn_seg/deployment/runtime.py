"""[`ORTModelForSemanticSegmentation`]: an exported Semantic FPN folder run by ONNX Runtime, called like the torch
model (`pixel_values` in, `SemanticSegmenterOutput` with torch `logits` at the input size out), so that the
processor's post-processing, `fpn_seg.segment`, `fpn-seg predict --onnx` and `pipeline("image-segmentation")` run it
unchanged.

An ONNX folder (written by `fpn-seg export`) holds `model.onnx` (float32, BatchNorm folded), optionally
`model_quantized.onnx` (static int8), `config.json` and `preprocessor_config.json`.
"""

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME

from ..configuration_semantic_fpn import SemanticFPNConfig
from ..image_processing_semantic_fpn import SemanticFPNImageProcessor
from ..model_folders import load_processor
from ..modeling_semantic_fpn import (
    SemanticFPNSegmenterOutput,
    check_pixel_values,
    image_sizes_of,
    is_padded_batch,
    logits_per_image,
)
from .dependencies import require

ONNX_FILE_NAME = "model.onnx"
QUANTIZED_FILE_NAME = "model_quantized.onnx"  # optimum's name for a quantized export
Precision = Literal["fp32", "int8"]
PRECISION_FILES: dict[str, str] = {"fp32": ONNX_FILE_NAME, "int8": QUANTIZED_FILE_NAME}


class OnnxFolderError(ValueError):
    """A folder that is not an ONNX export of a Semantic FPN model, or lacks the file a precision needs."""


def onnx_model_path(folder: str | os.PathLike, precision: Precision = "fp32") -> Path:
    """The ONNX file of `precision` in an exported folder; an `OnnxFolderError` naming what is missing otherwise."""
    if precision not in PRECISION_FILES:
        raise ValueError(f"precision must be one of {list(PRECISION_FILES)}; got {precision!r}.")
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


def session_options(num_threads: int | None = None):
    """ONNX Runtime session options used for Semantic FPN: every graph optimisation (conv + bias + ReLU / residual
    add fusion, the NCHWc conv layout, QDQ -> QLinearConv fusion for int8), sequential execution, `num_threads`
    intra-op threads (None: ONNX Runtime's default, one per physical core)."""
    (ort,) = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if num_threads is not None:
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int or None; got {num_threads!r}.")
        options.intra_op_num_threads = num_threads
    options.log_severity_level = 3  # errors only: ORT warns about hardware-specific fusions at every load
    return options


class ORTModelForSemanticSegmentation:
    """A Semantic FPN exported to ONNX, run by ONNX Runtime with the interface of the torch model.

    Calling it with `pixel_values` (B, 3, H, W) float32 (a torch tensor or a numpy array, as the processor makes them)
    returns a `SemanticFPNSegmenterOutput` (a `SemanticSegmenterOutput`) whose `logits` (B, num_labels, H, W) are a
    float32 torch tensor at the input size. `config` is the model's `SemanticFPNConfig` (classes and label policy).
    It is inference-only: no `labels` (no loss), no training mode, CPU tensors in and out (ONNX Runtime's own
    providers decide where it runs).

    Use [`from_pretrained`] on a folder written by `fpn-seg export` (or `fpn_seg.deployment.export_onnx`).
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    training = False

    def __init__(self, session, config: SemanticFPNConfig, model_path: Path, precision: Precision):
        self.session = session
        self.config = config
        self.model_path = model_path
        self.precision = precision
        self._input_name = session.get_inputs()[0].name

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        precision: Precision = "fp32",
        num_threads: int | None = None,
        providers: list | None = None,
    ) -> "ORTModelForSemanticSegmentation":
        """Load an exported folder: `model.onnx` (`precision="fp32"`) or `model_quantized.onnx` (`"int8"`), and its
        `config.json`.

        Args:
            folder: a folder written by `fpn-seg export`.
            precision: `"fp32"` (the exact export) or `"int8"` (static int8, if the export made one).
            num_threads: ONNX Runtime's intra-op threads; None: one per physical core.
            providers: ONNX Runtime execution providers (default: the CPU provider).
        """
        (ort,) = require("onnxruntime")
        path = onnx_model_path(folder, precision)
        config_file = Path(folder) / CONFIG_NAME
        if not config_file.is_file():
            raise OnnxFolderError(f"{str(folder)!r} has {path.name} but no {CONFIG_NAME}; export the folder again.")
        try:
            config = SemanticFPNConfig.from_pretrained(folder)
        except (OSError, ValueError, StrictDataclassError) as error:
            raise OnnxFolderError(f"{config_file}: not a Semantic FPN config ({str(error).splitlines()[0]}).") from None
        if config.model_type != SemanticFPNConfig.model_type:
            raise OnnxFolderError(f"{config_file}: model_type {config.model_type!r}, expected 'semantic_fpn'.")
        try:
            session = ort.InferenceSession(
                str(path), session_options(num_threads), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception classes for invalid or truncated files
            raise OnnxFolderError(f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]}).") from None
        return cls(session, config, path, precision)

    # ------------------------------------------------------------------------------------------ torch-like surface

    @property
    def device(self) -> torch.device:
        """Where the inputs and outputs live: the CPU (ONNX Runtime moves data to its providers itself)."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of `pixel_values` and `logits`: float32 (also for the int8 model, which quantises inside)."""
        return torch.float32

    def eval(self) -> "ORTModelForSemanticSegmentation":
        return self

    def train(self, mode: bool = True) -> "ORTModelForSemanticSegmentation":
        if mode:
            raise RuntimeError("An ONNX Runtime model is inference-only; train the torch model and export it again.")
        return self

    def to(self, device=None, *args, **kwargs) -> "ORTModelForSemanticSegmentation":
        """Accepts the CPU only: tensors go in and come out on the CPU."""
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(
                f"ORTModelForSemanticSegmentation runs on ONNX Runtime's providers and takes CPU tensors; got device "
                f"{device!r}. Pass providers=[...] to from_pretrained to run elsewhere."
            )
        return self

    def can_generate(self) -> bool:
        return False

    # ------------------------------------------------------------------------------------------ inference

    def __call__(
        self,
        pixel_values: torch.Tensor | np.ndarray,
        labels: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
    ) -> SemanticFPNSegmenterOutput | tuple:
        """Logits (B, num_labels, H, W) of `pixel_values` (B, 3, H, W) float32; with the processor's `pixel_mask` of a
        padded batch, each image runs alone on its own region, as the torch model does in eval mode."""
        if labels is not None or output_hidden_states:
            raise TypeError(
                "ORTModelForSemanticSegmentation returns logits only (no loss, no hidden states); call it with "
                "pixel_values (and pixel_mask) alone."
            )
        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(pixel_values)
        check_pixel_values(pixel_values, num_channels=3)
        pixel_values = pixel_values.detach().to(device="cpu", dtype=torch.float32)
        image_sizes = image_sizes_of(torch.as_tensor(pixel_mask)) if pixel_mask is not None else None
        if is_padded_batch(image_sizes, pixel_values):
            logits = logits_per_image(self._logits, pixel_values, image_sizes)
        else:
            logits = self._logits(pixel_values)
        return SemanticFPNSegmenterOutput(logits=logits, image_sizes=image_sizes) if return_dict else (logits,)

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self._input_name: pixel_values.contiguous().numpy()})
        return torch.from_numpy(logits)

    forward = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path}, precision={self.precision!r})"


def is_onnx_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` is an ONNX export (holds `model.onnx`), as opposed to a torch model folder or a hub id."""
    return (Path(folder) / ONNX_FILE_NAME).is_file()


def load_onnx_folder(
    folder: str | os.PathLike, precision: Precision = "fp32", num_threads: int | None = None
) -> tuple[ORTModelForSemanticSegmentation, SemanticFPNImageProcessor]:
    """An ONNX folder of `fpn-seg export` -> (its `ORTModelForSemanticSegmentation`, its image processor: the saved
    one, or the config's with a note when the folder has none). Raises `OnnxFolderError` / `ModelFolderError`."""
    model = ORTModelForSemanticSegmentation.from_pretrained(folder, precision=precision, num_threads=num_threads)
    has_processor = (Path(folder) / IMAGE_PROCESSOR_NAME).is_file()
    return model, load_processor(str(folder), model.config, f"ONNX folder {str(folder)!r}", has_processor)


__all__ = [
    "ONNX_FILE_NAME",
    "ORTModelForSemanticSegmentation",
    "OnnxFolderError",
    "PRECISION_FILES",
    "QUANTIZED_FILE_NAME",
    "is_onnx_folder",
    "load_onnx_folder",
    "onnx_model_path",
    "session_options",
]
