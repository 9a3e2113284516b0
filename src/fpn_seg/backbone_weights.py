"""A new Semantic FPN with pretrained backbone weights (mmseg trains from ImageNet ResNetV1c): the backbone folder
is an ordinary transformers backbone folder, loaded by its own class and put into the model strictly.
"""

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers.utils import SAFE_WEIGHTS_NAME

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from .presets import preset_config


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the target model: lists the missing, unexpected and wrongly shaped keys."""

    def __init__(self, missing=(), unexpected=(), wrong_shapes=(), source="checkpoint"):
        self.missing, self.unexpected, self.wrong_shapes = list(missing), list(unexpected), list(wrong_shapes)
        lines = [f"The {source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing[:20])}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected[:20])}")
        for key, got, expected in self.wrong_shapes[:20]:
            lines.append(f"  wrong shape for {key}: checkpoint {tuple(got)}, model {tuple(expected)}")
        super().__init__("\n".join(lines))


def check_state_dict_fits(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], unmapped=(), source: str = "checkpoint"
) -> None:
    """Raise a [`CheckpointMismatchError`] listing every key of `target` missing from `state_dict`, every key of
    `state_dict` (and of `unmapped`) that `target` does not have, and every shape that differs."""
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(unmapped) | (set(state_dict) - set(target)))
    wrong_shapes = [
        (key, value.shape, target[key].shape)
        for key, value in state_dict.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    if missing or unexpected or wrong_shapes:
        raise CheckpointMismatchError(missing, unexpected, wrong_shapes, source)


def load_pretrained_backbone(model: SemanticFPNForSemanticSegmentation, folder: str | os.PathLike) -> None:
    """Put the weights of a backbone folder (a transformers backbone folder, e.g. written by `fpn-seg convert
    --backbone`) into `model.backbone`, strictly: the backbone class loads its own folder, and every key and shape
    must fit (else a [`CheckpointMismatchError`] naming them)."""
    folder = Path(folder)
    if not (folder / SAFE_WEIGHTS_NAME).is_file():
        raise ValueError(f"{folder}: no {SAFE_WEIGHTS_NAME}; expected a backbone folder (fpn-seg convert --backbone).")
    source = f"backbone folder {folder}"
    loaded, report = type(model.backbone).from_pretrained(str(folder), output_loading_info=True)
    if report["missing_keys"] or report["unexpected_keys"]:  # from_pretrained only warns, and initialises the missing
        raise CheckpointMismatchError(report["missing_keys"], report["unexpected_keys"], source=source)
    pretrained = loaded.state_dict()
    check_state_dict_fits(pretrained, model.backbone.state_dict(), source=source)
    model.backbone.load_state_dict(pretrained, strict=True)


def semantic_fpn_from_pretrained_backbone(
    folder: str | os.PathLike,
    preset: str | None = None,
    backbone_overrides: dict | None = None,
    **config_kwargs,
) -> SemanticFPNForSemanticSegmentation:
    """A Semantic FPN ready to train: the backbone from a converted ImageNet folder, neck and head freshly
    initialised as mmseg does. `preset` gives labels and label policy; `config_kwargs` override config fields
    (e.g. `id2label` for your own classes when no preset is given); `backbone_overrides` override backbone config
    fields that do not change the weights (e.g. `{"norm_eval": True, "frozen_stages": 1}` for small batches)."""
    backbone_config = ResNetV1cConfig.from_pretrained(str(folder), **(backbone_overrides or {}))
    if preset is not None:
        config = preset_config(preset, backbone_config=backbone_config, **config_kwargs)
    else:
        config = SemanticFPNConfig(backbone_config=backbone_config, **config_kwargs)
    model = SemanticFPNForSemanticSegmentation(config)
    load_pretrained_backbone(model, folder)
    return model


__all__ = ["CheckpointMismatchError", "check_state_dict_fits", "load_pretrained_backbone", "semantic_fpn_from_pretrained_backbone"]
