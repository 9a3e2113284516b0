"""Moved: the conversion is `fpn_seg.conversion` (one module per concern) and training from a converted ImageNet
backbone is `fpn_seg.backbone_weights`; the names this module had are re-exported here so that earlier imports keep
working, except `build_backbone`, now `fpn_seg.conversion.checkpoints.build_imagenet_backbone`, and
`atomic_output_dir` / `check_output_dir`, which are `fpn_seg.atomic`'s."""

from .backbone_weights import load_pretrained_backbone, semantic_fpn_from_pretrained_backbone
from .conversion import *  # noqa: F401,F403
from .conversion import __all__ as _conversion_names
from .conversion.checkpoints import (
    build_semantic_fpn,
    check_class_names,
    infer_backbone_config,
    infer_resnet_depth,
    infer_semantic_fpn_config,
)

__all__ = [
    *_conversion_names,
    "build_semantic_fpn",
    "check_class_names",
    "infer_backbone_config",
    "infer_resnet_depth",
    "infer_semantic_fpn_config",
    "load_pretrained_backbone",
    "semantic_fpn_from_pretrained_backbone",
]
