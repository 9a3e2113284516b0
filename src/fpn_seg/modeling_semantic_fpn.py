"""Semantic FPN: backbone -> FPN neck -> Semantic FPN head (Kirillov et al., CVPR 2019; mmseg's `sem_fpn`).

Hub code: imports only sibling hub files, so a saved folder loads with `trust_remote_code=True` without `fpn_seg`.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_outputs import SemanticSegmenterOutput

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .model_loading import StrictLoadingMixin
from .modeling_resnet_v1c import ResNetV1cBackbone, init_batch_norm


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
    """Raise a `ValueError` naming the likely cause when integer `labels` hold values other than class ids and
    ignore_index (float labels are refused by the loss before). A device sync: the data path (`fpn-seg train`'s first
    batch) runs it, and the loss runs it only to explain a failure."""
    valid = labels[labels != config.ignore_index]
    if valid.numel() == 0 or (int(valid.min()) >= 0 and int(valid.max()) < config.num_labels):
        return
    bad = sorted(torch.unique(valid[(valid < 0) | (valid >= config.num_labels)]).tolist())
    shown = ", ".join(str(int(value)) for value in bad[:10]) + (" ..." if len(bad) > 10 else "")
    causes = []
    if bad[0] < 0:
        causes.append(
            f"negative values marking ignored pixels (set the config's ignore_index={int(bad[0])}, or map them to "
            f"{config.ignore_index})"
        )
    if bad[-1] >= config.num_labels:
        causes.append(
            f"labels not encoded with the model's label policy (reduce_labels={config.reduce_labels}: ADE20K-style "
            "annotations need reduce_labels=True), Cityscapes label ids given where train ids are expected (use "
            "*_labelTrainIds.png or the labelIds -> trainIds map), or colour-coded masks instead of class-index maps"
        )
    raise ValueError(
        f"labels hold values {shown} outside the {config.num_labels} class ids (0..{config.num_labels - 1}) and "
        f"ignore_index={config.ignore_index}. Likely causes: {'; '.join(causes)}."
    )


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int) -> None:
    """Raise a `TypeError` / `ValueError` saying what the model expects when `pixel_values` is not a float tensor of
    shape (batch, num_channels, height, width)."""
    expected = (
        f"a float tensor of shape (batch, {num_channels}, height, width), normalised as SemanticFPNImageProcessor does"
    )
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be {expected}; got a {type(pixel_values).__name__}.")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must be {expected}; got shape {tuple(pixel_values.shape)}. (A single image needs a batch "
            "dimension; channels-last (B, H, W, C) images need .permute(0, 3, 1, 2).)"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be {expected}; got dtype {pixel_values.dtype}: pass raw images through the processor."
        )


class SemanticFPNPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    """Base of the Semantic FPN models: mmseg's weight initialisation; strict loading and atomic saving come from
    [`StrictLoadingMixin`] (`model_loading.py`)."""

    config: SemanticFPNConfig
    base_model_prefix = "semantic_fpn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = []
    # Checkpoints the residual blocks of a ResNetV1c backbone (and of any backbone whose blocks support it).
    supports_gradient_checkpointing = True
    # The loss is a per-batch mean (see `SemanticFPNConfig.loss_average`): the Trainer scales it for gradient
    # accumulation itself instead of passing `num_items_in_batch`.
    accepts_loss_kwargs = False
    classifier_prefix = "decode_head.classifier"  # named by the message for a checkpoint of another class count

    def _init_weights(self, module):
        """PyTorch's default initialisation of the neck and head convs (kaiming-uniform weights with a=sqrt(5),
        biases uniform in +-1/sqrt(fan_in)) and unit BatchNorms. transformers calls this on every module that owns
        parameters, for a new model as for one materialised from the meta device (missing weights), so both get the
        same distributions; the backbone's modules get the backbone's own `_init_weights`."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()  # in_channels / groups * kernel height * kernel width
                init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, nn.BatchNorm2d):
            init_batch_norm(module)


def build_backbone(config: SemanticFPNConfig) -> nn.Module:
    """The backbone of `config`; ours is built directly so that remote-code loading needs no Auto registration.

    Compared by `model_type`, not class: under `trust_remote_code` the config and the model may come from two copies
    of `configuration_resnet_v1c.py` that transformers caches under different hashes.
    """
    if getattr(config.backbone_config, "model_type", None) == ResNetV1cConfig.model_type:
        return ResNetV1cBackbone(config.backbone_config)
    return load_backbone(config)


@dataclass
class SemanticFPNSegmenterOutput(SemanticSegmenterOutput):
    r"""
    `SemanticSegmenterOutput` plus, for a padded batch (given a `pixel_mask`):

    image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
        The (height, width) of each image's own region of the logits (top left); the rest is padding.
        `SemanticFPNImageProcessor.post_process_semantic_segmentation` crops to it before resizing.
    """

    image_sizes: torch.LongTensor | None = None


def image_sizes_of(pixel_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) mask, 1 on each image's own pixels (top left) -> (B, 2) int64 (height, width) of those regions."""
    rows, columns = pixel_mask.bool().any(dim=2), pixel_mask.bool().any(dim=1)  # (B, H), (B, W)
    return torch.stack([rows.sum(dim=1), columns.sum(dim=1)], dim=1).long()


def is_padded_batch(image_sizes: torch.Tensor | None, pixel_values: torch.Tensor) -> bool:
    """Whether some image of the batch `pixel_values` (B, C, H, W) is smaller than it: `image_sizes` (B, 2) from
    [`image_sizes_of`], or None for a batch without a `pixel_mask`."""
    return image_sizes is not None and bool((image_sizes != image_sizes.new_tensor(pixel_values.shape[-2:])).any())


def logits_per_image(compute_logits, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, H, W) of a padded batch with each image run alone on its own region, so that its logits equal
    its unbatched logits bit for bit; zeros over the padding. `compute_logits` maps (1, C, h, w) -> (1, N, h, w)."""
    logits = None
    for index, (height, width) in enumerate(image_sizes.tolist()):
        image_logits = compute_logits(pixel_values[index : index + 1, :, :height, :width])  # (1, N, h, w)
        if logits is None:
            logits = image_logits.new_zeros((len(pixel_values), image_logits.shape[1], *pixel_values.shape[-2:]))
        logits[index, :, :height, :width] = image_logits[0]
    return logits


class SemanticFPNForSemanticSegmentation(SemanticFPNPreTrainedModel):
    """Semantic FPN for semantic segmentation. `logits` come back at the input resolution, as mmseg resizes them at
    test time (bilinear, align_corners=False); the loss is computed at the labels' resolution."""

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
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SemanticFPNSegmenterOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`):
            Normalised images (see [`SemanticFPNImageProcessor`]).
        labels (`torch.LongTensor` of shape `(B, H_l, W_l)`, *optional*):
            Training ids in `[0, num_labels)` or `config.ignore_index`. The logits are resized to `(H_l, W_l)` for the
            loss when the sizes differ.
        pixel_mask (`torch.LongTensor` of shape `(B, H, W)`, *optional*):
            1 on each image's own pixels of a padded batch (the processor's output for images of different sizes).
            In eval mode each image then runs alone on its region (its logits equal its unbatched ones); in training
            the padded batch runs as it is, as mmseg trains on padded crops.
        output_hidden_states (`bool`, *optional*):
            Return the backbone's hidden states (stem and each stage) followed by the FPN levels (finest first).

        Returns `SemanticFPNSegmenterOutput` with `logits` of shape `(B, num_labels, H, W)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        check_pixel_values(pixel_values, getattr(self.config.backbone_config, "num_channels", 3))
        image_sizes = image_sizes_of(pixel_mask) if pixel_mask is not None else None
        if not self.training and is_padded_batch(image_sizes, pixel_values):
            if output_hidden_states:
                raise ValueError("output_hidden_states is not available for a padded batch of different sizes.")
            logits, hidden_states = logits_per_image(lambda image: self._logits(image)[0], pixel_values, image_sizes), None
        else:
            logits, hidden_states = self._logits(pixel_values, output_hidden_states)

        loss = self.segmentation_loss(logits, labels) if labels is not None else None
        if not return_dict:
            output = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SemanticFPNSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states, image_sizes=image_sizes)

    def _logits(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple | None]:
        """backbone -> neck -> head -> upsample: logits (B, num_labels, H, W) at the input size, and hidden states."""
        backbone_outputs = self.backbone.forward_with_filtered_kwargs(
            pixel_values, output_hidden_states=output_hidden_states, return_dict=True
        )
        pyramid = self.neck(list(backbone_outputs.feature_maps))  # strides 4..32, neck_channels each
        head_logits = self.decode_head(pyramid)  # (B, num_labels, H/4, W/4)
        logits = F.interpolate(head_logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(backbone_outputs.hidden_states or backbone_outputs.feature_maps) + tuple(pyramid)
        return logits, hidden_states

    def segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy under the config's label policy; `logits` (B, N, H, W), `labels` (B, H_l, W_l) class ids.

        Checks that need a device sync run only when the cross-entropy fails, to name the cause of bad values."""
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"labels must have shape (batch, height, width) = ({logits.shape[0]}, H, W); got {tuple(labels.shape)}."
            )
        if labels.is_floating_point():
            raise ValueError(
                f"labels have dtype {labels.dtype}; expected integer class ids (torch.long). Float labels often hold "
                "fractional values from a label map resized bilinearly: label maps must be resized with "
                "nearest-neighbour interpolation (SemanticFPNImageProcessor and the fpn_seg.data transforms do)."
            )
        if labels.shape[-2:] != logits.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        ignore_index = self.config.ignore_index
        try:
            pixel_losses = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
        except (IndexError, RuntimeError):
            check_label_values(labels, self.config)  # names the cause of out-of-range values
            raise
        if self.config.loss_average == "all_pixels":
            return pixel_losses.sum() / labels.numel()
        return pixel_losses.sum() / (labels != ignore_index).sum().clamp(min=1)

    def activation_checkpointing_enable(self, *args, **kwargs):
        """As transformers' own (also reached through the deprecated `gradient_checkpointing_enable` and the Trainer's
        `gradient_checkpointing=True`), but refused with the backbone named when the backbone cannot checkpoint its
        blocks (e.g. transformers' `ResNetBackbone`): Semantic FPN checkpoints the backbone's residual blocks."""
        if not getattr(self.backbone, "supports_gradient_checkpointing", False):
            backbone_type = getattr(self.config.backbone_config, "model_type", None)
            raise ValueError(
                f"Gradient checkpointing recomputes the backbone's blocks, and this model's backbone "
                f"{type(self.backbone).__name__} (model_type {backbone_type!r}) does not support it; use the "
                "ResNetV1c backbone or one whose transformers class supports gradient checkpointing."
            )
        return super().activation_checkpointing_enable(*args, **kwargs)


__all__ = [
    "build_backbone",
    "check_label_values",
    "check_pixel_values",
    "image_sizes_of",
    "is_padded_batch",
    "logits_per_image",
    "SemanticFPNConvBlock",
    "SemanticFPNForSemanticSegmentation",
    "SemanticFPNSegmenterOutput",
    "SemanticFPNHead",
    "SemanticFPNNeck",
    "SemanticFPNPreTrainedModel",
]
