"""mmsegmentation -> fpn_seg conversion, one module per concern: `model_zoo` (the known files, errors, fetching with
the sha256 check), `checkpoints` (safe reading, class names, architecture from shapes, building), `state_dict` (the
key mapping), `verification` (logits against a real-mmseg reference), `model_cards`, and `convert` (the conversions
and `fpn-seg convert`).
"""

from ..backbone_weights import CheckpointMismatchError
from .checkpoints import MMSegCheckpoint, load_checkpoint
from .convert import convert_imagenet_backbone, convert_semantic_fpn, main, official_table, push_folder_to_hub
from .model_cards import ConversionReport, render_model_card
from .model_zoo import (
    IMAGENET_BACKBONES,
    OFFICIAL_CHECKPOINTS,
    ChecksumError,
    ConversionArgumentError,
    ConversionError,
    ImageNetBackbone,
    OfficialCheckpoint,
    OutputExistsError,
    UnsafeCheckpointError,
    check_sha256_prefix,
    fetch_checkpoint,
    file_sha256,
    get_imagenet_backbone,
    get_official_checkpoint,
    sha256_prefix_in_name,
)
from .state_dict import convert_mmseg_backbone_state_dict, convert_mmseg_state_dict, map_mmseg_key
from .verification import LogitsComparison, compare_with_reference, verify_converted

__all__ = [
    "IMAGENET_BACKBONES",
    "OFFICIAL_CHECKPOINTS",
    "CheckpointMismatchError",
    "ChecksumError",
    "ConversionArgumentError",
    "ConversionError",
    "ConversionReport",
    "ImageNetBackbone",
    "LogitsComparison",
    "MMSegCheckpoint",
    "OfficialCheckpoint",
    "OutputExistsError",
    "UnsafeCheckpointError",
    "check_sha256_prefix",
    "compare_with_reference",
    "convert_imagenet_backbone",
    "convert_mmseg_backbone_state_dict",
    "convert_mmseg_state_dict",
    "convert_semantic_fpn",
    "fetch_checkpoint",
    "file_sha256",
    "get_imagenet_backbone",
    "get_official_checkpoint",
    "load_checkpoint",
    "main",
    "map_mmseg_key",
    "official_table",
    "push_folder_to_hub",
    "render_model_card",
    "sha256_prefix_in_name",
    "verify_converted",
]
