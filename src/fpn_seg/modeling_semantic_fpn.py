"""Semantic FPN: backbone -> FPN neck -> Semantic FPN head (Kirillov et al., CVPR 2019; mmseg's `sem_fpn`).

Hub code: imports only sibling hub files, so a saved folder loads with `trust_remote_code=True` without `fpn_seg`.
"""

import math
import os
import pickle
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import load_backbone
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .atomic import WEIGHT_FILE_NAME, save_folder_atomically, split_push_options
from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
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


class SemanticFPNPreTrainedModel(PreTrainedModel):
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
            init_batch_norm(module)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but a checkpoint that does not fit the config is an error, not a
        warning over randomly initialised layers.

        strict (`bool`, defaults to `True`):
            Refuse weights files that lack keys of the model or hold keys it does not have (a `config.json` and
            weights of different networks, e.g. another backbone depth). `strict=False` loads them as transformers
            does: missing weights randomly initialised, extra ones dropped, with its load report. Not applied when
            the weights come as `state_dict` with no folder (`from_pretrained(None, config=..., state_dict=...)`)
            or when `output_loading_info=True` asks for that report.

        Weights of another shape (e.g. a classifier for another number of classes) are refused unless
        `ignore_mismatched_sizes=True`, which re-initialises them (to fine-tune a new classifier).
        """
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        source = f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r})"
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                ignore_mismatched_sizes=True,  # checked below, with the keys and shapes named
                output_loading_info=True,
                **kwargs,
            )
        except pickle.UnpicklingError as error:  # a pickled weights file (.bin) that weights_only=True refuses
            raise pickle.UnpicklingError(_unpickling_message(source, error)) from None
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' class, named: hub code imports no safetensors
                raise
            raise OSError(
                f"{source}: the weights file ({SAFE_WEIGHTS_NAME}) is truncated or corrupt ({error}); was the save "
                "interrupted? Save the model again (save_pretrained writes the folder atomically)."
            ) from None
        if not ignore_mismatched_sizes and loading_info["mismatched_keys"]:
            raise ValueError(_mismatched_keys_message(source, loading_info["mismatched_keys"], model.config))
        # A plain load from a folder or hub id is strict; a given state_dict (`from_pretrained(None, config=...,
        # state_dict=...)`) and a load that asks for its report (`output_loading_info=True`) get transformers' report.
        strict = strict and pretrained_model_name_or_path is not None and not output_loading_info
        if strict and (loading_info["missing_keys"] or loading_info["unexpected_keys"]):
            missing, unexpected = loading_info["missing_keys"], loading_info["unexpected_keys"]
            raise ValueError(_missing_keys_message(source, missing, unexpected))
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """As `PreTrainedModel.save_pretrained`, but atomic: the files are written to a hidden sibling folder and moved
        in with `config.json` last, so a crash leaves the previous save (or a folder without `config.json`, which does
        not load), never a mix of two saves that loads; other files in the folder are kept (see
        `save_folder_atomically`). With `push_to_hub=True` the saved model is then uploaded with `push_to_hub`
        (`repo_id` defaults to the folder name; `commit_message`, `private`, `token`, `create_pr`... are passed on).
        """
        if not is_main_process or kwargs.get("distributed_checkpoint"):  # every process writes: no staging folder
            return super().save_pretrained(save_directory, is_main_process, state_dict, push_to_hub, **kwargs)
        kwargs, hub_options = split_push_options(kwargs, save_directory)
        save_folder = super().save_pretrained
        save_folder_atomically(
            lambda folder: save_folder(folder, state_dict=state_dict, **kwargs),
            save_directory,
            commit_file=CONFIG_NAME,
            retire=WEIGHT_FILE_NAME,
        )
        if push_to_hub:
            self.push_to_hub(**hub_options, max_shard_size=kwargs.get("max_shard_size", "50GB"))


def _shown_keys(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _mismatched_keys_message(source: str, mismatched_keys, config: SemanticFPNConfig) -> str:
    """Name the weights whose shapes differ; for the classifier, the two class counts and the fix."""
    shapes = {key: (tuple(saved), tuple(model)) for key, saved, model in mismatched_keys}
    listed = "; ".join(
        f"{key}: {saved} in the checkpoint, {model} in the model" for key, (saved, model) in sorted(shapes.items())[:4]
    )
    classifier = shapes.get("decode_head.classifier.weight")
    if classifier is not None and set(shapes) <= {"decode_head.classifier.weight", "decode_head.classifier.bias"}:
        return (
            f"{source}: the checkpoint's classifier has {classifier[0][0]} classes but the config asks for "
            f"{config.num_labels} (num_labels / id2label) ({listed}). Drop num_labels / id2label to load the saved "
            "classes, or pass ignore_mismatched_sizes=True to start a new classifier for the new classes (size "
            "mismatch; then fine-tune it)."
        )
    return (
        f"{source}: {len(shapes)} weights have another shape (size mismatch) than the config gives them: {listed}. "
        "The config and the weights describe different networks; pass ignore_mismatched_sizes=True to re-initialise "
        "those weights."
    )


def _unpickling_message(source: str, error: Exception) -> str:
    found = re.search(r"(Unsupported global|unsupported GLOBAL|WeightsUnpickler error):? .*", str(error))
    reason = (found.group(0) if found else str(error)[:300]).split(". ")[0].rstrip(".")  # torch's first sentence
    return (
        f"{source}: refused. The pickled weights file (pytorch_model.bin) cannot be read with "
        f"torch.load(weights_only=True): {reason}. Loading it with weights_only=False could run code from the file, "
        "which this model never does. Re-save the weights as safetensors (model.save_pretrained writes "
        f"{SAFE_WEIGHTS_NAME}) in an environment that trusts the file."
    )


def _missing_keys_message(source: str, missing_keys, unexpected_keys) -> str:
    parts = []
    if missing_keys:
        parts.append(f"the checkpoint lacks {len(missing_keys)} weights of the model ({_shown_keys(missing_keys)})")
    if unexpected_keys:
        shown = _shown_keys(unexpected_keys)
        parts.append(f"the checkpoint holds {len(unexpected_keys)} weights the model does not have ({shown})")
    return (
        f"{source}: {' and '.join(parts)}. The config.json and the weights do not describe the same network (e.g. "
        "another backbone depth or width, or weights of another model); loading would leave layers randomly "
        "initialised. Pass strict=False to load it anyway (as transformers does, with its load report)."
    )


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

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ):
        """As transformers' own, but refused with the backbone named when the backbone cannot checkpoint its blocks
        (e.g. transformers' `ResNetBackbone`): Semantic FPN checkpoints the backbone's residual blocks."""
        if enable and not getattr(self.backbone, "supports_gradient_checkpointing", False):
            backbone_type = getattr(self.config.backbone_config, "model_type", None)
            raise ValueError(
                f"Gradient checkpointing recomputes the backbone's blocks, and this model's backbone "
                f"{type(self.backbone).__name__} (model_type {backbone_type!r}) does not support it; use the "
                "ResNetV1c backbone or one whose transformers class supports gradient checkpointing."
            )
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)


__all__ = [
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
