"""[`ORTModelForSemanticSegmentation`]: an exported Semantic FPN folder run by ONNX Runtime (float32 `model.onnx` or
static int8 `model_quantized.onnx`), called like the torch model (see `ExportedModelForSemanticSegmentation`).
"""

from pathlib import Path

import torch

from ..configuration_semantic_fpn import SemanticFPNConfig
from .dependencies import require
from .exported_model import ExportedModelForSemanticSegmentation, check_num_threads


def session_options(num_threads: int | None = None):
    """ONNX Runtime session options used for Semantic FPN: every graph optimisation (conv + bias + ReLU / residual
    add fusion, the NCHWc conv layout, QDQ -> QLinearConv fusion for int8), sequential execution, `num_threads`
    intra-op threads (None: ONNX Runtime's default, one per physical core)."""
    (ort,) = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if check_num_threads(num_threads) is not None:
        options.intra_op_num_threads = num_threads
    options.log_severity_level = 3  # errors only: ORT warns about hardware-specific fusions at every load
    return options


class ORTModelForSemanticSegmentation(ExportedModelForSemanticSegmentation):
    """A Semantic FPN exported to ONNX, run by ONNX Runtime with the interface of the torch model: `precision="fp32"`
    runs `model.onnx`, `"int8"` the static int8 `model_quantized.onnx`.

    `from_pretrained(folder, precision, num_threads, providers=None)`: `providers` are ONNX Runtime's execution
    providers (default: the CPU provider). See [`ExportedModelForSemanticSegmentation`] for the call and the errors.
    """

    runtime_name = "ONNX Runtime"
    runtime_precisions = ("fp32", "int8")
    other_precisions = (
        "bf16 runs on OpenVINO (--runtime openvino, on CPUs with AVX512-BF16 or AMX) or as torch's autocast"
    )

    def __init__(self, session, config: SemanticFPNConfig, model_path: Path, precision: str):
        super().__init__(config, model_path, precision)
        self.session = session
        self._input_name = session.get_inputs()[0].name

    @classmethod
    def _require(cls) -> None:
        require("onnxruntime")

    @classmethod
    def _load(cls, path: Path, config, precision: str, num_threads: int | None, providers: list | None = None):
        (ort,) = require("onnxruntime")
        session = ort.InferenceSession(
            str(path), session_options(num_threads), providers=providers or ["CPUExecutionProvider"]
        )
        return cls(session, config, path, precision)

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self._input_name: pixel_values.contiguous().numpy()})
        return torch.from_numpy(logits)


__all__ = ["ORTModelForSemanticSegmentation", "session_options"]
