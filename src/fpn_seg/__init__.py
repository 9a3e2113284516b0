"""fpn_seg: Semantic FPN (mmsegmentation's sem_fpn) as a Hugging Face transformers model.

Importing the package registers the config, backbone, model and image processor with the transformers Auto classes.
"""

from transformers import AutoBackbone, AutoConfig, AutoModelForSemanticSegmentation

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import PRESETS, SemanticFPNConfig, SemanticFPNPreset, encode_labels, get_preset
from .modeling_resnet_v1c import ResNetV1cBackbone
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, SemanticFPNPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(ResNetV1cConfig.model_type, ResNetV1cConfig, exist_ok=True)
AutoConfig.register(SemanticFPNConfig.model_type, SemanticFPNConfig, exist_ok=True)
AutoBackbone.register(ResNetV1cConfig, ResNetV1cBackbone, exist_ok=True)
AutoModelForSemanticSegmentation.register(SemanticFPNConfig, SemanticFPNForSemanticSegmentation, exist_ok=True)

# `save_pretrained` then writes the code files and `auto_map`, so saved folders load with `trust_remote_code=True`.
ResNetV1cConfig.register_for_auto_class()
ResNetV1cBackbone.register_for_auto_class("AutoBackbone")
SemanticFPNConfig.register_for_auto_class()
SemanticFPNForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "PRESETS",
    "ResNetV1cBackbone",
    "ResNetV1cConfig",
    "SemanticFPNConfig",
    "SemanticFPNForSemanticSegmentation",
    "SemanticFPNPreTrainedModel",
    "SemanticFPNPreset",
    "encode_labels",
    "get_preset",
]
