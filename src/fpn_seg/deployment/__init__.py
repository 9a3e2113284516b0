"""Deployment of Semantic FPN: export to ONNX (BatchNorm folded, dynamic batch and size), static int8 quantisation
calibrated after the model's own processor, the exported folder run by ONNX Runtime
(`ORTModelForSemanticSegmentation`) or OpenVINO (`OVModelForSemanticSegmentation`) like the torch model, and
`load_runtime(folder, "auto")`, which picks the fastest correct runtime and precision for this machine by a short
probe. `fpn_seg.segment`, the processor's post-processing, `fpn-seg predict --runtime ...`, the app and
`pipeline("image-segmentation")` run every runtime's model unchanged.

Extras: `[onnx]` (onnx, onnxruntime, onnxscript: export, int8, ONNX Runtime), `[openvino]` (OpenVINO). Importing this
package works without them; what needs one raises an `ImportError` naming it.
"""

from .cpu_capabilities import CpuCapabilities, detect_cpu_capabilities
from .dependencies import require
from .exported_model import ExportedModelForSemanticSegmentation, PrecisionUnavailableError
from .export import ExportCheckError, ExportError, ExportReport, calibration_pixel_values, export_onnx
from .onnx_folder import (
    ONNX_FILE_NAME,
    PRECISIONS,
    QUANTIZED_FILE_NAME,
    OnnxFolderError,
    folder_precisions,
    is_onnx_folder,
    onnx_model_path,
)
from .onnxruntime_model import ORTModelForSemanticSegmentation
from .openvino_model import OVModelForSemanticSegmentation
from .quantization import QuantizationReport, quantize_onnx
from .runtime_choice import RuntimeChoice, RuntimeChoiceError
from .runtimes import RUNTIME_CHOICES, load_runtime

__all__ = [
    "ONNX_FILE_NAME",
    "PRECISIONS",
    "QUANTIZED_FILE_NAME",
    "RUNTIME_CHOICES",
    "CpuCapabilities",
    "ExportCheckError",
    "ExportError",
    "ExportReport",
    "ExportedModelForSemanticSegmentation",
    "ORTModelForSemanticSegmentation",
    "OVModelForSemanticSegmentation",
    "OnnxFolderError",
    "PrecisionUnavailableError",
    "QuantizationReport",
    "RuntimeChoice",
    "RuntimeChoiceError",
    "calibration_pixel_values",
    "detect_cpu_capabilities",
    "export_onnx",
    "folder_precisions",
    "is_onnx_folder",
    "load_runtime",
    "onnx_model_path",
    "quantize_onnx",
    "require",
]
