"""[`ExportedModelForSemanticSegmentation`]: what the runtimes of an ONNX folder share. Each runtime
(`ORTModelForSemanticSegmentation`, `OVModelForSemanticSegmentation`) is called like the torch model
(`pixel_values` in, `SemanticSegmenterOutput` with float32 torch `logits` at the input size out), so that the
processor's post-processing, `fpn_seg.segment`, `fpn-seg predict`, the app and `pipeline("image-segmentation")` run
it unchanged; a subclass only loads its file and maps a float32 batch to logits.
"""

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..configuration_semantic_fpn import SemanticFPNConfig
from ..modeling_semantic_fpn import (
    SemanticFPNSegmenterOutput,
    check_pixel_values,
    image_sizes_of,
    is_padded_batch,
    logits_per_image,
)
from .onnx_folder import OnnxFolderError, Precision, check_precision, load_export_config, onnx_model_path


class PrecisionUnavailableError(ValueError):
    """A precision that this runtime, or this machine's CPU, cannot run as asked; the message says what to use."""


def check_num_threads(num_threads: int | None) -> int | None:
    """`num_threads` if it is None (the runtime's default: one per physical core) or a positive int."""
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None; got {num_threads!r}.")
    return num_threads


class ExportedModelForSemanticSegmentation:
    """A Semantic FPN exported to ONNX, run by a runtime with the interface of the torch model.

    Calling it with `pixel_values` (B, 3, H, W) float32 (a torch tensor or a numpy array, as the processor makes them)
    returns a `SemanticFPNSegmenterOutput` (a `SemanticSegmenterOutput`) whose `logits` (B, num_labels, H, W) are a
    float32 torch tensor at the input size; with the processor's `pixel_mask` of a padded batch, each image runs alone
    on its own region, as the torch model does in eval mode. `config` is the model's `SemanticFPNConfig` (classes and
    label policy). Inference-only: no `labels` (no loss), no training mode, CPU tensors in and out.

    Subclasses set `runtime_name`, `runtime_precisions` and `other_precisions`, and implement `_load` and `_logits`.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    training = False
    runtime_name: ClassVar[str] = "a runtime"
    runtime_precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    other_precisions: ClassVar[str] = ""  # where the other precisions run, for the error of one this runtime lacks

    def __init__(self, config: SemanticFPNConfig, model_path: Path, precision: Precision):
        self.config = config
        self.model_path = model_path
        self.precision = precision

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, precision: Precision = "fp32", num_threads: int | None = None, **options
    ) -> "ExportedModelForSemanticSegmentation":
        """Load an ONNX folder written by `fpn-seg export`: the file of `precision` (`model.onnx` for fp32 and bf16,
        `model_quantized.onnx` for int8) and `config.json`.

        Args:
            folder: a folder written by `fpn-seg export` (or `fpn_seg.deployment.export_onnx`).
            precision: `"fp32"` (the exact export), `"bf16"` or `"int8"`, as far as the runtime runs them.
            num_threads: the runtime's intra-op threads; None: its default (one per physical core).
            options: the runtime's own options (see the subclass).

        Raises:
            ImportError: the runtime's extra is not installed (the message names it).
            OnnxFolderError: the folder lacks the file or config, or the runtime cannot load or compile the file.
            PrecisionUnavailableError: this runtime or this CPU cannot run `precision`.
        """
        check_precision(precision)
        cls._require()
        if precision not in cls.runtime_precisions:
            raise PrecisionUnavailableError(
                f"{cls.runtime_name} runs {' and '.join(cls.runtime_precisions)}, not {precision}; "
                f"{cls.other_precisions}."
            )
        check_num_threads(num_threads)
        path = onnx_model_path(folder, precision)
        config = load_export_config(folder, path)
        try:
            return cls._load(path, config, precision, num_threads, **options)
        except (OnnxFolderError, PrecisionUnavailableError, ImportError, TypeError):
            raise
        except Exception as error:  # the runtimes raise their own exception classes for invalid or truncated files
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OnnxFolderError(
                f"{path}: {cls.runtime_name} cannot load it ({message[:300]}). Export the folder again with fpn-seg "
                "export, or use another --runtime."
            ) from None

    @classmethod
    def _require(cls) -> None:
        """Import the runtime, or raise the `ImportError` that names its extra."""

    @classmethod
    def _load(cls, path: Path, config: SemanticFPNConfig, precision: str, num_threads: int | None, **options):
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ torch-like surface

    @property
    def device(self) -> torch.device:
        """Where the inputs and outputs live: the CPU."""
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of `pixel_values` and `logits`: float32 (also for bf16 and int8, which convert inside)."""
        return torch.float32

    def eval(self) -> "ExportedModelForSemanticSegmentation":
        return self

    def train(self, mode: bool = True) -> "ExportedModelForSemanticSegmentation":
        if mode:
            raise RuntimeError(
                f"{type(self).__name__} is inference-only; train the torch model and export it again."
            )
        return self

    def to(self, device=None, *args, **kwargs) -> "ExportedModelForSemanticSegmentation":
        """Accepts the CPU only: tensors go in and come out on the CPU."""
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(
                f"{type(self).__name__} runs on {self.runtime_name} and takes CPU tensors; got device {device!r}."
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
                f"{type(self).__name__} returns logits only (no loss, no hidden states); call it with pixel_values "
                "(and pixel_mask) alone."
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
        """(B, 3, H, W) float32 CPU tensor -> (B, num_labels, H, W) float32 CPU tensor."""
        raise NotImplementedError

    forward = __call__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path}, precision={self.precision!r})"


__all__ = ["ExportedModelForSemanticSegmentation", "PrecisionUnavailableError", "check_num_threads"]
