"""Semantic FPN: backbone -> FPN neck -> Semantic FPN head (Kirillov et al., CVPR 2019; mmseg's `sem_fpn`).

Hub code: imports only sibling hub files, so a saved folder loads with `trust_remote_code=True` without `fpn_seg`.
"""

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .modeling_resnet_v1c import ResNetV1cBackbone, fold_batch_norm_into_conv


class SemanticFPNNeck(nn.Module):
    """Feature pyramid: 1x1 laterals, a nearest-neighbour top-down path, 3x3 output convs (biases, no norm).

    Input: one (B, C_i, H_i, W_i) map per level, finest first. Output: as many (B, neck_channels, H_i, W_i) maps.
    """

    def __init__(self, in_channels: list[int], neck_channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(channels, neck_channels, 1) for channels in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(neck_channels, neck_channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features)]
        for level in range(len(laterals) - 1, 0, -1):
            # Legacy "nearest" with an explicit size (not scale_factor=2): exact on inputs not divisible by 32.
            laterals[level - 1] = laterals[level - 1] + F.interpolate(
                laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest"
            )
        return [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]


class SemanticFPNConvBlock(nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, optionally followed by a x2 bilinear upsample."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.norm(self.conv(hidden_states)))
        if self.upsample:  # (B, C, h, w) -> (B, C, 2h, 2w)
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False)
        return hidden_states


class SemanticFPNHead(nn.Module):
    """Semantic FPN head: each level goes through `max(1, log2(s_i / s_0))` conv blocks, every block of a coarser
    level doubling the resolution; the levels are summed at the finest stride, then dropout and a 1x1 classifier.

    Input: FPN levels (B, neck_channels, H_i, W_i), finest first. Output: logits (B, num_labels, H_0, W_0).
    """

    def __init__(self, config: SemanticFPNConfig):
        super().__init__()
        finest = config.feature_strides[0]
        self.scale_heads = nn.ModuleList()
        for level, stride in enumerate(config.feature_strides):
            num_blocks = max(1, int(math.log2(stride) - math.log2(finest)))
            blocks = [
                SemanticFPNConvBlock(
                    config.neck_channels if index == 0 else config.head_channels,
                    config.head_channels,
                    upsample=level > 0,
                )
                for index in range(num_blocks)
            ]
            self.scale_heads.append(nn.Sequential(*blocks))
        self.dropout = nn.Dropout2d(config.classifier_dropout)
        self.classifier = nn.Conv2d(config.head_channels, config.num_labels, 1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        fused = self.scale_heads[0](pyramid[0])  # (B, head_channels, H_0, W_0)
        for scale_head, level in zip(self.scale_heads[1:], pyramid[1:]):
            fused = fused + F.interpolate(
                scale_head(level), size=fused.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.classifier(self.dropout(fused))  # (B, num_labels, H_0, W_0)


def check_label_values(labels: torch.Tensor, config: SemanticFPNConfig) -> None:
    """Raise a `ValueError` naming the likely cause when `labels` hold values other than class ids and ignore_index."""
    valid = labels[labels != config.ignore_index]
    if valid.numel() == 0 or (int(valid.min()) >= 0 and int(valid.max()) < config.num_labels):
        return
    bad = sorted(torch.unique(valid[(valid < 0) | (valid >= config.num_labels)]).tolist())
    shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    raise ValueError(
        f"labels hold values {shown} outside the {config.num_labels} class ids (0..{config.num_labels - 1}) and "
        f"ignore_index={config.ignore_index}. Likely causes: labels not encoded with the model's label policy "
        f"(reduce_labels={config.reduce_labels}: ADE20K-style annotations need reduce_labels=True), Cityscapes "
        "label ids given where train ids are expected (use *_labelTrainIds.png or the labelIds -> trainIds map), "
        "or colour-coded masks instead of class-index maps."
    )


class SemanticFPNPreTrainedModel(PreTrainedModel):
    config: SemanticFPNConfig
    base_model_prefix = "semantic_fpn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = []
    # The loss is a per-batch mean (see `SemanticFPNConfig.loss_average`): the Trainer scales it for gradient
    # accumulation itself instead of passing `num_items_in_batch`.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        """mmseg's initialisations: xavier-uniform FPN convs, kaiming-normal head convs, N(0, 0.01) classifier."""
        if isinstance(module, SemanticFPNNeck):
            for conv in [*module.lateral_convs, *module.fpn_convs]:
                init.xavier_uniform_(conv.weight)
                init.zeros_(conv.bias)
        elif isinstance(module, SemanticFPNConvBlock):
            init.kaiming_normal_(module.conv.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, SemanticFPNHead):
            init.normal_(module.classifier.weight, mean=0.0, std=0.01)
            init.zeros_(module.classifier.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


def build_backbone(config: SemanticFPNConfig) -> nn.Module:
    """The backbone of `config`; ours is built directly so that remote-code loading needs no Auto registration.

    Compared by `model_type`, not class: under `trust_remote_code` the config and the model may come from two copies
    of `configuration_resnet_v1c.py` that transformers caches under different hashes.
    """
    if getattr(config.backbone_config, "model_type", None) == ResNetV1cConfig.model_type:
        return ResNetV1cBackbone(config.backbone_config)
    return load_backbone(config)


class SemanticFPNForSemanticSegmentation(SemanticFPNPreTrainedModel):
    """Semantic FPN for semantic segmentation. `logits` come back at the input resolution, as mmseg resizes them at
    test time (bilinear, align_corners=False); the loss is computed at the labels' resolution."""

    # True on the eval-only copies made by `fold_batch_norm()`.
    is_batch_norm_folded: bool = False

    def __init__(self, config: SemanticFPNConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.neck = SemanticFPNNeck(self.backbone.channels, config.neck_channels)
        self.decode_head = SemanticFPNHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
            Normalised images (see [`SemanticFPNImageProcessor`]).
        labels (`torch.LongTensor` of shape `(B, H_l, W_l)`, *optional*):
            Training ids in `[0, num_labels)` or `config.ignore_index`. The logits are resized to `(H_l, W_l)` for the
            loss when the sizes differ.
        output_hidden_states (`bool`, *optional*):
            Return the backbone's hidden states (stem and each stage) followed by the FPN levels (finest first).

        Returns `SemanticSegmenterOutput` with `logits` of shape `(B, num_labels, H, W)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if labels is not None:
            check_label_values(labels, self.config)
        backbone_outputs = self.backbone(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        pyramid = self.neck(list(backbone_outputs.feature_maps))  # strides 4..32, neck_channels each
        head_logits = self.decode_head(pyramid)  # (B, num_labels, H/4, W/4)
        logits = F.interpolate(head_logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)

        loss = self.segmentation_loss(logits, labels) if labels is not None else None
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(backbone_outputs.hidden_states or backbone_outputs.feature_maps) + tuple(pyramid)
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states)

    def segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy under the config's label policy; `logits` (B, N, H, W), `labels` (B, H_l, W_l)."""
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape (batch, height, width) = ({logits.shape[0]}, H, W); got {tuple(labels.shape)}."
            )
        if labels.shape[-2:] != logits.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        ignore_index = self.config.ignore_index
        pixel_losses = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
        if self.config.loss_average == "all_pixels":
            return pixel_losses.sum() / labels.numel()
        return pixel_losses.sum() / (labels != ignore_index).sum().clamp(min=1)

    def fold_batch_norm(self) -> "SemanticFPNForSemanticSegmentation":
        """An eval-only copy of the model in which every BatchNorm that follows a conv is folded into that conv.

        Each folded conv gets a bias and its BatchNorm becomes `nn.Identity`, saving one pass over each activation at
        inference; logits equal the eval-mode model's up to float rounding (about 1e-6 relative). BatchNorms of
        other backbones than ResNetV1c stay as they are. `self` is left untouched.

        The copy refuses `.train()` and `save_pretrained()` (its state dict has no BatchNorm entries, so it would not
        load into an unfolded model); its parameters do not require grad. A forward pass with `labels` is allowed:
        the eval loss depends on the logits only.
        """
        folded = copy.deepcopy(self).eval()
        head_blocks = [module for module in folded.decode_head.modules() if isinstance(module, SemanticFPNConvBlock)]
        pairs = [(block, "conv", "norm") for block in head_blocks]
        if hasattr(folded.backbone, "conv_norm_pairs"):
            pairs += folded.backbone.conv_norm_pairs()
        for parent, conv_name, norm_name in pairs:
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            if isinstance(norm, nn.BatchNorm2d):
                setattr(parent, conv_name, fold_batch_norm_into_conv(conv, norm))
                setattr(parent, norm_name, nn.Identity())
        folded.requires_grad_(False)
        folded.is_batch_norm_folded = True
        return folded

    def train(self, mode: bool = True):
        """As `nn.Module.train`; a BatchNorm-folded copy (see `fold_batch_norm`) cannot be put in training mode."""
        if mode and self.is_batch_norm_folded:
            raise RuntimeError(
                "This model is a BatchNorm-folded inference copy (made by fold_batch_norm()) and cannot be trained: "
                "its BatchNorms are merged into the convs. Train the original, unfolded model instead."
            )
        return super().train(mode)

    def save_pretrained(self, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`; refused for a BatchNorm-folded copy, whose weights have no
        BatchNorm entries and would load into an unfolded model as silently wrong BatchNorms."""
        if self.is_batch_norm_folded:
            raise RuntimeError(
                "This model is a BatchNorm-folded inference copy (made by fold_batch_norm()); save the original, "
                "unfolded model instead and fold it again after loading."
            )
        return super().save_pretrained(*args, **kwargs)


__all__ = [
    "check_label_values",
    "SemanticFPNConvBlock",
    "SemanticFPNForSemanticSegmentation",
    "SemanticFPNHead",
    "SemanticFPNNeck",
    "SemanticFPNPreTrainedModel",
]
