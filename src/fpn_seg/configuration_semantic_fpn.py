"""Semantic FPN configuration.

Hub code: copied by `save_pretrained` next to the weights for `trust_remote_code`; it imports only its sibling hub
files.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import consolidate_backbone_kwargs_to_config
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from .configuration_resnet_v1c import ResNetV1cConfig
from .label_policy import LabelPolicy

# Backbone keyword arguments of transformers' vision configs that Semantic FPN does not take, and why.
_REFUSED_BACKBONE_KWARGS = {
    "use_pretrained_backbone": "load pretrained backbone weights into the model instead (fpn-seg train "
    "--backbone_name_or_path, or the backbone class's own from_pretrained)",
    "use_timm_backbone": "timm backbones are not supported; pass a transformers backbone config as backbone_config",
}


@strict
class SemanticFPNConfig(PreTrainedConfig):
    r"""
    Configuration of [`SemanticFPNForSemanticSegmentation`]: a backbone, an FPN neck and the Semantic FPN head of
    Kirillov et al., "Panoptic Feature Pyramid Networks" (CVPR 2019), laid out as mmsegmentation's `sem_fpn` models.

    The config also holds the **label policy** (`ignore_index`, `reduce_labels`, `label_map`; as one object,
    [`label_policy`]) and the classes (`id2label`) that the image processor, the loss, the metric and the
    post-processing all read.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Any backbone config that `transformers.load_backbone` can build (e.g. a `ResNetConfig` or `ConvNextConfig`
            with four `out_features`). Defaults to a [`ResNetV1cConfig`] of depth 50 (mmseg's ResNetV1c-50).
        backbone (`str`, *optional*):
            Instead of `backbone_config`: a hub id or local folder whose config is the backbone's, with
            `backbone_kwargs` (`dict`) applied to it. (`use_pretrained_backbone` and `use_timm_backbone` are
            refused: weights are loaded into the model, not through the config.)
        neck_channels (`int`, defaults to 256):
            Channels of every FPN level.
        head_channels (`int`, defaults to 128):
            Channels of the head's scale branches.
        feature_strides (`list[int]`, defaults to `[4, 8, 16, 32]`):
            Output stride of each backbone feature the head fuses, finest first, each twice the previous; level `i`
            gets `max(1, log2(stride_i) - log2(stride_0))` conv blocks and is upsampled to the finest level.
        classifier_dropout (`float`, defaults to 0.1):
            Dropout2d before the 1x1 classifier.
        ignore_index (`int`, defaults to 255):
            Label value that the loss and the metric skip.
        reduce_labels (`bool`, defaults to `False`):
            Raw annotations use 0 for "other" (ADE20K): 0 -> `ignore_index`, `v` -> `v - 1` when labels are encoded.
        label_map (`dict[int, int]`, *optional*):
            Raw annotation value -> training id, applied before `reduce_labels` (e.g. Cityscapes label ids -> train
            ids); values it does not name become `ignore_index`.
        loss_average (`str`, defaults to `"all_pixels"`):
            `"all_pixels"`: cross-entropy summed over valid pixels divided by all pixels of the batch, ignored ones
            included (mmseg's `avg_non_ignore=False`). `"non_ignored"`: divided by the valid pixels (torch/HF default).

    Example:

    ```python
    >>> from fpn_seg import ResNetV1cConfig, SemanticFPNConfig, SemanticFPNForSemanticSegmentation
    >>> config = SemanticFPNConfig(backbone_config=ResNetV1cConfig(depth=101), id2label={0: "road", 1: "sky"})
    >>> model = SemanticFPNForSemanticSegmentation(config)
    ```
    """

    model_type = "semantic_fpn"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type=ResNetV1cConfig.model_type),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    neck_channels: int = 256
    head_channels: int = 128
    feature_strides: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    classifier_dropout: float = 0.1
    ignore_index: int = 255
    reduce_labels: bool = False
    label_map: dict[int, int] | dict[str, int] | None = None
    loss_average: Literal["all_pixels", "non_ignored"] = "all_pixels"

    def __post_init__(self, **kwargs):
        self.backbone_config, kwargs = _backbone_config(self.backbone_config, kwargs)
        self.feature_strides = list(self.feature_strides)
        if self.label_map is not None:
            self.label_map = {int(raw): int(train) for raw, train in self.label_map.items()}
        super().__post_init__(**kwargs)
        if self.id2label is not None:  # always the inverse of id2label (a stale one would outlive changed classes)
            self.label2id = {str(name): int(index) for index, name in self.id2label.items()}

    @property
    def label_policy(self) -> LabelPolicy:
        """The label policy of these fields (`reduce_labels`, `label_map`, `ignore_index`) as one value; a processor
        gets it with `SemanticFPNImageProcessor.from_model_config(config)`."""
        return LabelPolicy.of(self)

    def validate_feature_strides(self):
        """One positive stride per backbone feature, each twice the previous (the head doubles between levels)."""
        strides = list(self.feature_strides)
        if not strides or any(stride <= 0 for stride in strides):
            raise ValueError(f"feature_strides must be positive; got {strides}.")
        if any(coarser != 2 * finer for finer, coarser in zip(strides, strides[1:])):
            raise ValueError(f"feature_strides must double from level to level (e.g. [4, 8, 16, 32]); got {strides}.")
        out_features = getattr(self.backbone_config, "out_features", None)
        if out_features is not None and len(out_features) != len(strides):
            raise ValueError(
                f"the backbone returns {len(out_features)} features ({out_features}) but feature_strides has "
                f"{len(strides)} entries ({strides}); set the backbone's out_features to one entry per stride."
            )

    def validate_widths(self):
        if self.neck_channels < 1 or self.head_channels < 1:
            raise ValueError(
                f"neck_channels and head_channels must be positive; got {self.neck_channels}, {self.head_channels}."
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1); got {self.classifier_dropout}.")

    def validate_label_policy(self):
        """At least two classes, `ignore_index` outside them, `label_map` values class ids or `ignore_index`."""
        if self.num_labels < 2:
            raise ValueError(f"at least 2 labels are needed; got num_labels={self.num_labels}.")
        if 0 <= self.ignore_index < self.num_labels:
            raise ValueError(
                f"ignore_index={self.ignore_index} is a class id (num_labels={self.num_labels}); pick a value outside "
                "0..num_labels-1 (255 by convention)."
            )
        if self.label_map:
            bad = sorted({int(value) for value in self.label_map.values()} - {*range(self.num_labels), self.ignore_index})
            if bad:
                raise ValueError(
                    f"label_map maps raw values to {bad}, which are neither class ids (0..{self.num_labels - 1}) nor "
                    f"ignore_index={self.ignore_index}."
                )


def _backbone_config(backbone_config, kwargs: dict) -> tuple[PreTrainedConfig, dict]:
    """The backbone config of `SemanticFPNConfig(backbone_config=..., **kwargs)`, and the kwargs left.

    Ours (None, a `ResNetV1cConfig` or its dict) is built directly, so that a `trust_remote_code` load works without
    the `resnet_v1c` type registered with `AutoConfig`; any other goes through transformers'
    `consolidate_backbone_kwargs_to_config`. `backbone` + `backbone_kwargs` name a backbone by its config's folder
    or hub id; the other backbone kwargs of transformers' vision configs are refused with the reason.
    """
    for name, reason in _REFUSED_BACKBONE_KWARGS.items():
        if kwargs.pop(name, None):
            raise ValueError(f"SemanticFPNConfig does not take {name}=True: {reason}.")
    backbone, backbone_kwargs = kwargs.pop("backbone", None), kwargs.pop("backbone_kwargs", None) or {}
    if backbone is not None:
        if backbone_config is not None:
            raise ValueError("SemanticFPNConfig takes backbone_config or backbone, not both.")
        backbone_config = AutoConfig.from_pretrained(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs apply to backbone=...; set the fields of backbone_config instead.")
    if backbone_config is None:
        return ResNetV1cConfig(), kwargs
    if isinstance(backbone_config, dict) and backbone_config.get("model_type", ResNetV1cConfig.model_type) == (
        ResNetV1cConfig.model_type
    ):
        return ResNetV1cConfig.from_dict({k: v for k, v in backbone_config.items() if k != "model_type"}), kwargs
    if isinstance(backbone_config, (dict, PreTrainedConfig)):
        backbone_config, kwargs = consolidate_backbone_kwargs_to_config(backbone_config=backbone_config, **kwargs)
        return backbone_config, kwargs
    raise TypeError(f"backbone_config must be a backbone config or its dict; got {type(backbone_config).__name__}.")


__all__ = ["SemanticFPNConfig"]
