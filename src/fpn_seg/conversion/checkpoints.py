"""Reading mmseg checkpoints safely (`torch.load(weights_only=True)` only), checking their class names, inferring
the architecture from tensor shapes, and building the model that holds their weights (mapped by `state_dict`).
"""

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..configuration_resnet_v1c import ResNetV1cConfig
from ..configuration_semantic_fpn import SemanticFPNConfig
from ..label_sets import DATASET_CLASSES
from ..modeling_resnet_v1c import ResNetV1cBackbone
from ..modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from ..presets import SemanticFPNPreset, get_preset, preset_config
from .model_zoo import ConversionError, UnsafeCheckpointError
from .state_dict import convert_mmseg_backbone_state_dict, convert_mmseg_state_dict, strip_module_prefix

OFFICIAL_WIDTHS = {"stem_channels": 64, "base_channels": 64, "neck_channels": 256, "head_channels": 128}


@dataclass
class MMSegCheckpoint:
    """What a checkpoint file holds: the tensors (`module.` stripped) and mmseg's `meta` dict (or `{}`)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)


def _numpy_scalar_globals() -> list:
    """Globals needed to rebuild plain numpy scalars (numbers in `meta`, e.g. scores); safe to allowlist."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [np.float64, np.float32, np.int64, np.int32, np.bool_]
    return [scalar, np.dtype, *{type(np.dtype(kind)) for kind in dtypes}]


def _unpickling_refusal(path: Path, error: Exception) -> UnsafeCheckpointError:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip-format file: fall back to the unpickler's own words
        unsafe = []
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(error))
    reason = f"it references {', '.join(unsafe)}" if unsafe else (detail.group(1) if detail else str(error)[:300])
    return UnsafeCheckpointError(
        f"{path}: refused. The file cannot be read with torch.load(weights_only=True): {reason}. Loading it would "
        "need arbitrary unpickling (weights_only=False), which can run code from the file, so this converter never "
        "does it. Re-save the file as plain tensors from a trusted environment, e.g. "
        "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth'), and convert that."
    )


def load_checkpoint(path: str | os.PathLike) -> MMSegCheckpoint:
    """Read a checkpoint with `torch.load(weights_only=True)`; `{"state_dict": ..., "meta": ...}` or a bare dict.

    `optimizer` and other top-level entries are ignored. Raises [`UnsafeCheckpointError`] for a file that needs
    arbitrary unpickling and [`ConversionError`] for one that holds no tensor dict.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_refusal(path, error) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({error}).") from None
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict of tensors or {{'state_dict': ...}}, got {type(checkpoint)}.")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"{path}: checkpoint['state_dict'] is a {type(state_dict)}, expected a dict of tensors.")
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    not_tensors = sorted(str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(
            f"{path}: the state dict holds entries that are not tensors: {', '.join(not_tensors[:10])}. Expected "
            "mmseg's {'state_dict': {name: tensor}, 'meta': {...}} or a bare {name: tensor} dict."
        )
    try:
        state_dict = strip_module_prefix(state_dict)
    except ValueError as error:
        raise ConversionError(f"{path}: {error}") from None
    return MMSegCheckpoint(path, state_dict, dict(meta) if isinstance(meta, Mapping) else {})


def check_class_names(meta: Mapping, preset: SemanticFPNPreset, source: str) -> bool:
    """Compare mmseg's class names (`meta["CLASSES"]` of mmseg 0.x, `meta["dataset_meta"]["classes"]` of mmseg 1.x;
    stripped) with the preset's; `False` when the checkpoint has none."""
    classes, where = meta.get("CLASSES"), "meta['CLASSES']"
    if classes is None and isinstance(meta.get("dataset_meta"), Mapping):
        classes, where = meta["dataset_meta"].get("classes"), "meta['dataset_meta']['classes']"
    if classes is None:
        return False
    found = [str(name).strip() for name in classes]
    expected = list(DATASET_CLASSES[preset.dataset])
    if found != expected:
        differences = [
            f"{index}: {a!r} != {b!r}" for index, (a, b) in enumerate(zip(found, expected)) if a != b
        ][:5]
        raise ConversionError(
            f"{source}: {where} ({len(found)} names) does not match the {len(expected)} {preset.dataset} "
            f"classes of preset {preset.name!r}" + (f" ({'; '.join(differences)})" if differences else "") + "."
        )
    return True


def _dim(state_dict: Mapping[str, torch.Tensor], key: str, dim: int, default: int) -> int:
    """`state_dict[key].shape[dim]`, or `default` when the key is absent (the strict mapping reports it later)."""
    value = state_dict.get(key)
    return int(value.shape[dim]) if value is not None and value.dim() > dim else default


def infer_resnet_depth(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> int | None:
    """ResNet depth from the number of blocks per stage (`<prefix>layer<s>.<block>.*` keys), or `None`."""
    pattern = re.compile(rf"^{re.escape(prefix)}layer([1-4])\.(\d+)\.")
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = pattern.match(key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], block + 1)
    bottleneck = any(key.startswith(f"{prefix}layer1.0.conv3.") for key in state_dict)
    for depth, (block_type, stage_depths) in ResNetV1cConfig.block_depths.items():
        if tuple(blocks) == stage_depths and (block_type == "bottleneck") == bottleneck:
            return depth
    return None


def infer_backbone_config(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "", depth: int | None = None, source: str = "checkpoint"
) -> ResNetV1cConfig:
    """A [`ResNetV1cConfig`] whose depth and widths (stem, base) are read from the shapes of a ResNetV1c state dict.

    `depth`, when given, must agree with the keys; when the keys fit no known depth, `depth` is used and the strict
    mapping reports the missing or unexpected blocks.
    """
    found = infer_resnet_depth(state_dict, prefix)
    if depth is not None and found is not None and found != depth:
        raise ConversionError(f"{source}: the keys describe a ResNet-{found}, but ResNet-{depth} was asked for.")
    depth = depth or found
    if depth is None:
        raise ConversionError(
            f"{source}: cannot tell the ResNet depth from the keys (no complete {prefix}layer1..4 blocks); "
            "give it explicitly (--backbone-depth)."
        )
    return ResNetV1cConfig(
        depth=depth,
        stem_channels=_dim(state_dict, f"{prefix}stem.6.weight", 0, OFFICIAL_WIDTHS["stem_channels"]),
        base_channels=_dim(state_dict, f"{prefix}layer1.0.conv1.weight", 0, OFFICIAL_WIDTHS["base_channels"]),
    )


def infer_semantic_fpn_config(
    state_dict: Mapping[str, torch.Tensor], preset_name: str, source: str = "checkpoint"
) -> SemanticFPNConfig:
    """The preset's config (labels, label policy) with the depth and widths read from the state dict's shapes.

    Official checkpoints give the preset's own architecture; narrowed ones (e.g. the `_w16` reference fixtures) give
    their narrower widths. The depth and the class count must match the preset.
    """
    preset = get_preset(preset_name)
    backbone_config = infer_backbone_config(state_dict, "backbone.", preset.depth, source)
    num_classes = _dim(state_dict, "decode_head.conv_seg.weight", 0, preset.num_labels)
    if num_classes != preset.num_labels:
        raise ConversionError(
            f"{source}: the classifier (decode_head.conv_seg) has {num_classes} classes, but preset {preset_name!r} "
            f"({preset.dataset}) has {preset.num_labels}."
        )
    return preset_config(
        preset_name,
        backbone_config=backbone_config,
        neck_channels=_dim(state_dict, "neck.lateral_convs.0.conv.weight", 0, OFFICIAL_WIDTHS["neck_channels"]),
        head_channels=_dim(state_dict, "decode_head.conv_seg.weight", 1, OFFICIAL_WIDTHS["head_channels"]),
    )


def architecture_widths(config: SemanticFPNConfig) -> dict[str, int]:
    """The widths that distinguish the official architecture from a narrowed one."""
    return {
        "stem_channels": config.backbone_config.stem_channels,
        "base_channels": config.backbone_config.base_channels,
        "neck_channels": config.neck_channels,
        "head_channels": config.head_channels,
    }


def _materialise(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give a meta-device `model` the (already strictly checked) `weights`: contiguous, in the model's dtypes."""
    targets = model.state_dict()
    tensors = {key: value.to(targets[key].dtype).contiguous() for key, value in weights.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def build_semantic_fpn(state_dict: Mapping[str, torch.Tensor], config: SemanticFPNConfig, source: str):
    """A [`SemanticFPNForSemanticSegmentation`] holding the mmseg `state_dict`; built on the meta device (no random
    initialisation), mapped strictly (raises [`CheckpointMismatchError`])."""
    with torch.device("meta"):
        model = SemanticFPNForSemanticSegmentation(config)
    return _materialise(model, convert_mmseg_state_dict(state_dict, model, source=source))


def build_imagenet_backbone(state_dict: Mapping[str, torch.Tensor], config: ResNetV1cConfig, source: str):
    """A [`ResNetV1cBackbone`] holding an ImageNet ResNetV1c state dict (`fc.*` dropped), mapped strictly."""
    with torch.device("meta"):
        backbone = ResNetV1cBackbone(config)
    return _materialise(backbone, convert_mmseg_backbone_state_dict(state_dict, backbone, source=source))


__all__ = [
    "OFFICIAL_WIDTHS",
    "MMSegCheckpoint",
    "architecture_widths",
    "build_imagenet_backbone",
    "build_semantic_fpn",
    "check_class_names",
    "infer_backbone_config",
    "infer_resnet_depth",
    "infer_semantic_fpn_config",
    "load_checkpoint",
]
