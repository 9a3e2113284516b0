"""Moved: the conversion is `fpn_seg.conversion` (one module per concern) and training from a converted ImageNet
backbone is `fpn_seg.backbone_weights`; their names are re-exported here so that earlier imports keep working."""

from .backbone_weights import load_pretrained_backbone, semantic_fpn_from_pretrained_backbone
from .conversion import *  # noqa: F401,F403
from .conversion import __all__ as _conversion_names

__all__ = [*_conversion_names, "load_pretrained_backbone", "semantic_fpn_from_pretrained_backbone"]
