"""A web page (Gradio) for any Semantic FPN model folder or ONNX export: upload photos, choose mmseg's test mode and
the precision, see the overlay, the class shares and the time, download the label map; also an API and a
Hugging Face Space writer. The page needs the `[app]` extra (gradio); the model service does not.
"""

from .service import DEFAULT_MAX_PIXELS, MODES, AppError, SegmentationResult, SegmentationService
from .space import write_space
from .ui import build_app, launch_app

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODES",
    "AppError",
    "SegmentationResult",
    "SegmentationService",
    "build_app",
    "launch_app",
    "write_space",
]
