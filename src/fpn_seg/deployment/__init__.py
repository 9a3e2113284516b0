"""Deployment of Semantic FPN: export to ONNX (BatchNorm folded, dynamic batch and size), static int8 quantisation
calibrated after the model's own processor, and an ONNX Runtime model class that `fpn_seg.segment`, the processor's
post-processing, `fpn-seg predict --onnx` and `pipeline("image-segmentation")` run like the torch model.

Needs the `[onnx]` extra (onnx, onnxruntime, onnxscript): `pip install 'fpn_seg[onnx]'`. Importing this package works
without it; the functions that need it raise an `ImportError` naming the extra.
"""

from .dependencies import require
from .export import ExportCheckError, ExportError, ExportReport, calibration_pixel_values, export_onnx
from .quantization import QuantizationReport, quantize_onnx
from .runtime import (
    ONNX_FILE_NAME,
    QUANTIZED_FILE_NAME,
    ORTModelForSemanticSegmentation,
    OnnxFolderError,
    onnx_model_path,
)

__all__ = [
    "ONNX_FILE_NAME",
    "QUANTIZED_FILE_NAME",
    "ExportCheckError",
    "ExportError",
    "ExportReport",
    "ORTModelForSemanticSegmentation",
    "OnnxFolderError",
    "QuantizationReport",
    "calibration_pixel_values",
    "export_onnx",
    "onnx_model_path",
    "quantize_onnx",
    "require",
]
