"""Key mapping from mmsegmentation `sem_fpn` state dicts (and ImageNet ResNetV1c files) to ours.

mmseg name                                        ours
`backbone.<rest>`                                 `backbone.<rest>` (same module layout)
`neck.{lateral,fpn}_convs.<i>.conv.<p>`           `neck.{lateral,fpn}_convs.<i>.<p>`
`decode_head.scale_heads.<i>.<2k>.conv.<p>`       `decode_head.scale_heads.<i>.<k>.conv.<p>` (odd mmseg indices are
`decode_head.scale_heads.<i>.<2k>.bn.<p>`         `decode_head.scale_heads.<i>.<k>.norm.<p>`  parameter-free upsamples)
`decode_head.conv_seg.<p>`                        `decode_head.classifier.<p>`

The mapping is strict: every key is used once, and the result must match the target model's keys and shapes.
"""

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..backbone_weights import check_state_dict_fits

_RULES = (
    (re.compile(r"^backbone\.(.+)$"), r"backbone.\1"),
    (re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$"), r"neck.\1.\2.\3"),
    (re.compile(r"^decode_head\.conv_seg\.(weight|bias)$"), r"decode_head.classifier.\1"),
)
_SCALE_HEAD = re.compile(r"^decode_head\.scale_heads\.(\d+)\.(\d+)\.(conv|bn)\.(\w+)$")


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that DataParallel / DDP checkpoints carry; a `ValueError` when a key is present
    both with and without it (two different tensors for one name)."""
    stripped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in stripped:
            raise ValueError(f"The state dict holds {name!r} both with and without the 'module.' prefix.")
        stripped[name] = value
    return stripped


def map_mmseg_key(key: str) -> str | None:
    """Our name for one mmseg `sem_fpn` key, or `None` when the key has no counterpart."""
    match = _SCALE_HEAD.match(key)
    if match:
        level, index, kind, param = match.groups()
        if int(index) % 2:
            return None
        return f"decode_head.scale_heads.{level}.{int(index) // 2}.{'conv' if kind == 'conv' else 'norm'}.{param}"
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def convert_mmseg_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str = "mmseg checkpoint"
) -> dict[str, torch.Tensor]:
    """Map a mmseg `sem_fpn` state dict (`ckpt["state_dict"]`) onto `model`'s keys, strictly.

    Raises [`CheckpointMismatchError`] listing every missing, unexpected or wrongly shaped key. `model` may live on
    the meta device: only its key names and shapes are read.
    """
    mapped, unmapped = {}, []
    for key, value in strip_module_prefix(state_dict).items():
        new_key = map_mmseg_key(key)
        if new_key is None or new_key in mapped:
            unmapped.append(key)
        else:
            mapped[new_key] = value
    check_state_dict_fits(mapped, model.state_dict(), unmapped, source)
    return mapped


def convert_mmseg_backbone_state_dict(
    state_dict: Mapping[str, torch.Tensor], backbone: nn.Module, source: str = "ImageNet ResNetV1c checkpoint"
) -> dict[str, torch.Tensor]:
    """Map an ImageNet ResNetV1c file (bare `stem.*` / `layerN.*` keys; the classifier `fc.*` is dropped) onto
    `backbone`'s keys, strictly. A `backbone.` prefix (a backbone cut out of a segmentor) is accepted too."""
    mapped, unmapped = {}, []
    for key, value in strip_module_prefix(state_dict).items():
        if key.startswith("fc."):
            continue
        key = key[len("backbone.") :] if key.startswith("backbone.") else key
        if key in mapped:
            unmapped.append(key)
        else:
            mapped[key] = value
    check_state_dict_fits(mapped, backbone.state_dict(), unmapped, source)
    return mapped


__all__ = [
    "convert_mmseg_backbone_state_dict",
    "convert_mmseg_state_dict",
    "map_mmseg_key",
    "strip_module_prefix",
]
