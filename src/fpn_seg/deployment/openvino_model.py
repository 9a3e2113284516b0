"""[`OVModelForSemanticSegmentation`] (optimum-intel's name): an exported Semantic FPN folder run by OpenVINO's CPU
plugin, called like the torch model (see `ExportedModelForSemanticSegmentation`). Needs the `[openvino]` extra.

Precisions: `fp32` (`model.onnx` with `INFERENCE_PRECISION_HINT` f32: exact up to float rounding; OpenVINO's own
default on bf16 CPUs would be bf16), `bf16` (`model.onnx` computed in bfloat16: only on CPUs whose OpenVINO has bf16
kernels, AVX512-BF16 or AMX; elsewhere OpenVINO would silently compute float32, so it is refused) and `int8` (our
calibrated static int8 `model_quantized.onnx`, its float parts in float32).

Shapes: the model is compiled once with dynamic batch, height and width, which serves every input. With
`static_shapes=N`, an input shape seen `STATIC_AFTER_CALLS` times also gets a copy compiled for exactly that shape (at
most N of them). Off by default: measured on R-50 (benchmarks/README.md, "OpenVINO: dynamic or static shapes") a
static copy saved 0-5% per call, within this machine's noise, and cost a compile (~1 s) on the call that makes it and
a second copy of the repacked weights (+240 MiB for float32).
"""

import threading
from collections import Counter
from pathlib import Path

import torch

from .cpu_capabilities import detect_cpu_capabilities
from .dependencies import require
from .exported_model import ExportedModelForSemanticSegmentation, PrecisionUnavailableError
from .signal_stack import kept_signal_stack

# INFERENCE_PRECISION_HINT per precision: the precision of everything that is not quantised.
INFERENCE_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
STATIC_AFTER_CALLS = 2  # an input shape seen this often gets its own static compile
DEFAULT_STATIC_SHAPES = 0  # static copies per model by default (each holds its own repacked weights)


def _openvino():
    (openvino,) = require("openvino", purpose="OpenVINO inference", extra="openvino")
    return openvino


class _CompiledModel:
    """A compiled model with a pool of infer requests: a request serves one call at a time, and concurrent calls
    (the app's) each take their own."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._idle: list = []
        self._lock = threading.Lock()

    def infer(self, array):
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            return request.infer({0: array}, share_inputs=True)[0]  # outputs are copied out of the request
        finally:
            with self._lock:
                self._idle.append(request)


class OVModelForSemanticSegmentation(ExportedModelForSemanticSegmentation):
    """A Semantic FPN exported to ONNX, run by OpenVINO with the interface of the torch model.

    `from_pretrained(folder, precision="fp32" | "bf16" | "int8", num_threads=None, static_shapes=0,
    properties=None)`: `num_threads` sets OpenVINO's `INFERENCE_NUM_THREADS` (None: all cores), `static_shapes` how many
    repeated input shapes get a copy compiled for their exact shape (0: the dynamic model only), `properties` more
    OpenVINO CPU properties. See [`ExportedModelForSemanticSegmentation`] for the call and the errors; bf16 on a CPU
    without bfloat16 kernels raises `PrecisionUnavailableError`.
    """

    runtime_name = "OpenVINO"
    runtime_precisions = ("fp32", "bf16", "int8")

    def __init__(self, core, ov_model, compiled, config, model_path: Path, precision: str, properties: dict,
                 static_shapes: int = DEFAULT_STATIC_SHAPES):  # fmt: skip
        super().__init__(config, model_path, precision)
        self.core, self.properties, self.static_shapes = core, properties, static_shapes
        self._ov_model = ov_model
        self._dynamic = _CompiledModel(compiled)
        self._static: dict[tuple[int, ...], _CompiledModel] = {}
        self._calls: Counter = Counter()
        self._lock = threading.Lock()

    @classmethod
    def _require(cls) -> None:
        _openvino()

    @classmethod
    def _load(cls, path: Path, config, precision: str, num_threads: int | None,
              static_shapes: int = DEFAULT_STATIC_SHAPES, properties: dict | None = None):  # fmt: skip
        openvino = _openvino()
        if not isinstance(static_shapes, int) or static_shapes < 0:
            raise ValueError(f"static_shapes must be a non-negative int; got {static_shapes!r}.")
        capabilities = detect_cpu_capabilities()
        if precision == "bf16" and not capabilities.openvino_bf16:
            raise PrecisionUnavailableError(bf16_refusal(path.parent, capabilities.describe()))
        settings = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            settings["INFERENCE_NUM_THREADS"] = num_threads
        settings.update(properties or {})
        core = openvino.Core()
        ov_model = core.read_model(str(path))
        with kept_signal_stack():  # see signal_stack.py: OpenVINO's own stack must not outlive its model
            compiled = core.compile_model(ov_model, "CPU", settings)
        if precision == "bf16" and compiled.get_property("INFERENCE_PRECISION_HINT") != openvino.Type.bf16:
            raise PrecisionUnavailableError(bf16_refusal(path.parent, capabilities.describe()))
        return cls(core, ov_model, compiled, config, path, precision, settings, static_shapes)

    def _compiled_for(self, shape: tuple[int, ...]) -> _CompiledModel:
        """The static copy for `shape` when it has one or has earned one; else the dynamic model."""
        if not self.static_shapes:
            return self._dynamic
        with self._lock:
            if shape in self._static:
                return self._static[shape]
            self._calls[shape] += 1
            if self._calls[shape] < STATIC_AFTER_CALLS or len(self._static) >= self.static_shapes:
                return self._dynamic
            model = self._ov_model.clone()
            model.reshape(list(shape))
            with kept_signal_stack():
                self._static[shape] = _CompiledModel(self.core.compile_model(model, "CPU", self.properties))
            return self._static[shape]

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        array = pixel_values.contiguous().numpy()
        return torch.from_numpy(self._compiled_for(tuple(array.shape)).infer(array))


def bf16_refusal(folder, cpu: str) -> str:
    """The one-line error for bf16 asked on a CPU without bfloat16 kernels."""
    return (
        f"precision bf16 was asked for {str(folder)!r}, but this CPU, {cpu}, has no bfloat16 kernels in OpenVINO "
        "(they need AVX512-BF16 or AMX): OpenVINO would silently compute float32. Use --precision fp32 (exact) or "
        "int8, or --runtime auto to take the fastest that runs here."
    )


__all__ = ["DEFAULT_STATIC_SHAPES", "INFERENCE_PRECISION_HINTS", "OVModelForSemanticSegmentation", "bf16_refusal"]
