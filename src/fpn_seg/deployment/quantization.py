"""Static int8 quantisation of an exported Semantic FPN (`model.onnx` -> `model_quantized.onnx`) with ONNX Runtime's
quantisation tools, calibrated on images after the model's own processor.

The recipe (each choice measured; see benchmarks/README.md, "int8"): QDQ format (ONNX Runtime fuses it into
QLinearConv / QLinearAdd kernels, which use VNNI on AVX-512 CPUs), unsigned 8-bit activations with signed 8-bit
weights quantised per output channel, activation ranges from the min / max over the calibration images. The classifier
(the last 1x1 conv) and the final resize of the logits stay float32, so that the logits come out unquantised.
"""

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .dependencies import require

CalibrationMethod = Literal["minmax", "percentile", "entropy"]


@dataclass
class QuantizationReport:
    """What [`quantize_onnx`] did: how many calibration inputs it used, which nodes it left in float32."""

    num_calibration_inputs: int
    calibration_method: str
    per_channel: bool
    float_nodes: list[str] = field(default_factory=list)


def _float_tail(model) -> list[str]:
    """Names of the nodes from the last conv (the classifier) to the graph output (its resize): kept float32."""
    producers = {output: node for node in model.graph.node for output in node.output}
    node = producers[model.graph.output[0].name]
    tail = [node.name]
    while node.op_type != "Conv":
        node = producers.get(node.input[0])
        if node is None:
            return []
        tail.append(node.name)
    return tail


def quantize_onnx(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration_inputs: Iterable[np.ndarray | torch.Tensor],
    *,
    calibration_method: CalibrationMethod = "minmax",
    per_channel: bool = True,
    float_logits: bool = True,
) -> QuantizationReport:
    """Write a static int8 (QDQ) copy of the float32 ONNX model at `model_path` to `output_path`.

    Args:
        calibration_inputs: `pixel_values` arrays (1, 3, H, W) float32, as the model's processor makes them (sizes
            may differ); ranges are accumulated one input at a time, so memory does not grow with their number.
        calibration_method: how activation ranges are taken from the calibration outputs: `"minmax"` (the extremes),
            `"percentile"` (99.999th percentile of a histogram) or `"entropy"` (KL divergence).
        per_channel: one weight scale per output channel (else one per tensor).
        float_logits: keep the classifier and the final logits resize in float32.
    """
    onnx, quantization = require("onnx", "onnxruntime.quantization", purpose="int8 quantisation")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "percentile": quantization.CalibrationMethod.Percentile,
        "entropy": quantization.CalibrationMethod.Entropy,
    }
    if calibration_method not in methods:
        raise ValueError(f"calibration_method must be one of {list(methods)}; got {calibration_method!r}.")
    reader = _CalibrationReader(iter(calibration_inputs), quantization.CalibrationDataReader)
    output_path = Path(output_path)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=output_path.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        # ONNX shape inference + ONNX Runtime's basic graph optimisations first, as its quantisation guide advises.
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        float_nodes = _float_tail(onnx.load(str(prepared), load_external_data=False)) if float_logits else []
        quantization.quantize_static(
            str(prepared),
            str(output_path),
            reader.as_reader(),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[calibration_method],
            nodes_to_exclude=float_nodes,
        )
    if reader.count == 0:
        raise ValueError("quantize_onnx: calibration_inputs gave no inputs; pass at least one image.")
    return QuantizationReport(reader.count, calibration_method, per_channel, float_nodes)


class _CalibrationReader:
    """Feeds ONNX Runtime's calibrator one `pixel_values` array at a time, counting them."""

    def __init__(self, inputs: Iterator, base: type):
        self.inputs, self.base, self.count = inputs, base, 0

    def next_input(self) -> dict[str, np.ndarray] | None:
        pixel_values = next(self.inputs, None)
        if pixel_values is None:
            return None
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().numpy()
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        self.count += 1
        return {"pixel_values": pixel_values}

    def as_reader(self):
        """An instance of ONNX Runtime's `CalibrationDataReader` that reads from this one."""
        outer = self

        class Reader(self.base):
            def get_next(self):
                return outer.next_input()

        return Reader()


__all__ = ["CalibrationMethod", "QuantizationReport", "quantize_onnx"]
