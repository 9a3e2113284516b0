"""fpn_seg: Semantic FPN (mmsegmentation's sem_fpn) as a Hugging Face transformers model.

Importing the package registers the config, backbone, model and image processor with the transformers Auto classes.
"""

import logging

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation
from transformers.utils import logging as transformers_logging
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the real class, even without torchvision

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .modeling_resnet_v1c import ResNetV1cBackbone
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, SemanticFPNPreTrainedModel
from .image_processing_semantic_fpn import SemanticFPNImageProcessor
from .image_reading import (
    CorruptImageError,
    ImageFileError,
    ImageTooLargeError,
    NotAnImageError,
    image_to_tensor,
    label_to_tensor,
    open_image,
)
from .label_policy import LabelPolicy
from .presets import PRESETS, SemanticFPNPreset, get_preset, preset_config, preset_processor
from .inference import multiscale_flip_inference, segment, slide_inference, whole_inference
from .segmenter import SemanticSegmenter

__version__ = "0.1.0"


class _RegisteredSegmenterFilter(logging.Filter):
    """`pipeline("image-segmentation")` checks the model class against transformers' built-in name tables only and
    logs an error for registered models such as ours (and for the ONNX Runtime model), although it runs them
    correctly; drop that one message. transformers offers no public way to add a registered model to those tables;
    `tests/test_pipeline.py` shows the message without this filter (so it fails once transformers stops logging it)."""

    MODELS = ("SemanticFPNForSemanticSegmentation", "ORTModelForSemanticSegmentation")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f"'{name}' is not supported for image-segmentation" in message for name in self.MODELS)


transformers_logging.get_logger("transformers.pipelines.base").addFilter(_RegisteredSegmenterFilter())

AutoConfig.register(ResNetV1cConfig.model_type, ResNetV1cConfig, exist_ok=True)
AutoConfig.register(SemanticFPNConfig.model_type, SemanticFPNConfig, exist_ok=True)
AutoBackbone.register(ResNetV1cConfig, ResNetV1cBackbone, exist_ok=True)
AutoModelForSemanticSegmentation.register(SemanticFPNConfig, SemanticFPNForSemanticSegmentation, exist_ok=True)
# The processor runs on torch alone; registered under both standard backend names so that neither choice warns.
AutoImageProcessor.register(
    SemanticFPNConfig,
    image_processor_classes={"torchvision": SemanticFPNImageProcessor, "pil": SemanticFPNImageProcessor},
    exist_ok=True,
)
# "No video processor": without this, pipeline() derives a remote video processor from the image processor's
# `auto_map` and asks on the terminal whether to trust it (blocking for 15 s) before giving up on it. Pinned by
# `tests/test_pipeline.py::test_pipeline_asks_to_trust_a_video_processor_without_the_empty_registration`.
AutoVideoProcessor.register(SemanticFPNConfig, video_processor_classes={}, exist_ok=True)

# `save_pretrained` then writes the code files and `auto_map`, so saved folders load with `trust_remote_code=True`.
ResNetV1cConfig.register_for_auto_class()
ResNetV1cBackbone.register_for_auto_class("AutoBackbone")
SemanticFPNConfig.register_for_auto_class()
SemanticFPNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
SemanticFPNImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "CorruptImageError",
    "ImageFileError",
    "ImageTooLargeError",
    "LabelPolicy",
    "NotAnImageError",
    "PRESETS",
    "ResNetV1cBackbone",
    "ResNetV1cConfig",
    "SemanticFPNConfig",
    "SemanticFPNForSemanticSegmentation",
    "SemanticFPNImageProcessor",
    "SemanticFPNPreTrainedModel",
    "SemanticSegmenter",
    "SemanticFPNPreset",
    "get_preset",
    "image_to_tensor",
    "label_to_tensor",
    "multiscale_flip_inference",
    "open_image",
    "preset_config",
    "preset_processor",
    "segment",
    "slide_inference",
    "whole_inference",
]
