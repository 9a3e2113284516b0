"""mmsegmentation's ResNet (V1b / V1c / V1d) as a transformers backbone.

Module names follow mmseg's `ResNetV1c` (`stem.0`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...), so a mmseg
backbone state dict loads after stripping its `backbone.` prefix. Hub code: imports only sibling hub files.
"""

import contextlib

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput

from .configuration_resnet_v1c import ResNetV1cConfig

# Every BatchNorm module class, by torch's public names (their common base `_BatchNorm` is private).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def _batch_norm_statistics_kept(module: nn.Module):
    """While inside, `module`'s BatchNorms normalise with batch statistics as usual but leave their running
    statistics as they are (momentum 0; `num_batches_tracked` put back on exit): the recomputation of a checkpointed
    block in the backward pass must not update them a second time, nor write to tensors autograd saved."""
    norms = [norm for norm in module.modules() if isinstance(norm, BATCH_NORMS)]
    saved = [(norm.momentum, None if norm.num_batches_tracked is None else norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged, bit for bit
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (momentum, tracked) in zip(norms, saved):
                norm.momentum = momentum
                if tracked is not None:
                    norm.num_batches_tracked.copy_(tracked)


class RecomputationGuard:
    """Handed to one checkpointed call of a residual block (as a keyword argument, which transformers'
    `GradientCheckpointingLayer` binds into the function it checkpoints, so that the forward pass and the recomputation
    in the backward pass receive the same guard): the first run of the block is the forward pass and updates the
    BatchNorm running statistics; any later run is a recomputation and leaves them alone. A checkpointed step thus
    updates them once, as a plain step does."""

    def __init__(self):
        self.runs = 0

    @torch.compiler.disable  # dynamo cannot trace the run count: under torch.compile the checkpointed block runs eagerly
    def run(self, block: "ResNetV1cBlock", hidden_states: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        if self.runs == 1:  # the forward pass
            return block.residual(hidden_states)
        with _batch_norm_statistics_kept(block):  # a recomputation
            return block.residual(hidden_states)


class ResNetV1cBlock(GradientCheckpointingLayer):
    """Base of the residual blocks (subclasses define `residual`). With gradient checkpointing on
    (`model.activation_checkpointing_enable()` / `TrainingArguments(gradient_checkpointing=True)`, every option of
    transformers' mechanism), a training forward keeps only the block's input and recomputes the rest in the backward
    pass; the backbone passes a [`RecomputationGuard`] to each checkpointed call so that the BatchNorm statistics are
    updated as without checkpointing."""

    def forward(self, hidden_states: torch.Tensor, recomputation: RecomputationGuard | None = None) -> torch.Tensor:
        if recomputation is None:
            return self.residual(hidden_states)
        return recomputation.run(self, hidden_states)

    def residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ResNetV1cBasicBlock(ResNetV1cBlock):
    """Two 3x3 convs (stride on the first) with an identity or projection shortcut; expansion 1."""

    expansion = 1

    def __init__(self, in_channels, planes, stride, dilation, downsample, eps):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        hidden_states = self.relu(self.bn1(self.conv1(hidden_states)))
        hidden_states = self.bn2(self.conv2(hidden_states))
        return self.relu(hidden_states + shortcut)


class ResNetV1cBottleneck(ResNetV1cBlock):
    """1x1 -> 3x3 (carries the stride: mmseg's "pytorch" style) -> 1x1 with 4x expansion, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels, planes, stride, dilation, downsample, eps):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_states if self.downsample is None else self.downsample(hidden_states)
        hidden_states = self.relu(self.bn1(self.conv1(hidden_states)))
        hidden_states = self.relu(self.bn2(self.conv2(hidden_states)))
        hidden_states = self.bn3(self.conv3(hidden_states))
        return self.relu(hidden_states + shortcut)


def _make_stage(config: ResNetV1cConfig, stage: int, in_channels: int) -> nn.Sequential:
    block = ResNetV1cBasicBlock if config.block_type == "basic" else ResNetV1cBottleneck
    planes = config.base_channels * 2**stage
    out_channels = planes * block.expansion
    stride, dilation, eps = config.strides[stage], config.dilations[stage], config.batch_norm_eps
    downsample = None
    if stride != 1 or in_channels != out_channels:
        layers = []
        if config.avg_down and stride != 1:  # V1d: pool first, then a stride-1 projection
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            stride_of_conv = 1
        else:
            stride_of_conv = stride
        layers += [
            nn.Conv2d(in_channels, out_channels, 1, stride_of_conv, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps),
        ]
        downsample = nn.Sequential(*layers)
    blocks = [block(in_channels, planes, stride, dilation, downsample, eps)]
    for _ in range(1, config.stage_depths[stage]):
        blocks.append(block(out_channels, planes, 1, dilation, None, eps))
    return nn.Sequential(*blocks)


def init_batch_norm(module: nn.BatchNorm2d) -> None:
    """Unit scale, zero shift, and running statistics of a fresh BatchNorm (through the loading-aware init helpers)."""
    init.ones_(module.weight)
    init.zeros_(module.bias)
    init.zeros_(module.running_mean)
    init.ones_(module.running_var)
    if getattr(module, "num_batches_tracked", None) is not None:
        init.zeros_(module.num_batches_tracked)


class ResNetV1cPreTrainedModel(PreTrainedModel):
    config: ResNetV1cConfig
    base_model_prefix = "resnet_v1c"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ResNetV1cBasicBlock", "ResNetV1cBottleneck"]
    supports_gradient_checkpointing = True  # the residual blocks (see `ResNetV1cBlock`)

    def _init_weights(self, module):
        """mmseg's ResNet initialisation: kaiming-normal (fan_out) convs, unit BatchNorms."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init_batch_norm(module)


class ResNetV1cBackbone(BackboneMixin, ResNetV1cPreTrainedModel):
    """ResNetV1c backbone returning the feature maps named in `config.out_features` (strides 4, 8, 16, 32).

    `stage_names = ["stem", "stage1", ..., "stage4"]`; "stem" is the max-pooled stem output (stride 4).
    """

    has_attentions = False

    def __init__(self, config: ResNetV1cConfig):
        super().__init__(config)
        stem_width = config.stem_channels
        eps = config.batch_norm_eps
        if config.deep_stem:
            half = stem_width // 2
            self.stem = nn.Sequential(
                nn.Conv2d(config.num_channels, half, 3, 2, padding=1, bias=False),
                nn.BatchNorm2d(half, eps=eps),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, 1, padding=1, bias=False),
                nn.BatchNorm2d(half, eps=eps),
                nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_width, 3, 1, padding=1, bias=False),
                nn.BatchNorm2d(stem_width, eps=eps),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(config.num_channels, stem_width, 7, 2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width, eps=eps)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_width
        for stage in range(4):
            self.add_module(f"layer{stage + 1}", _make_stage(config, stage, in_channels))
            in_channels = config.hidden_sizes[stage]
        self.num_features = [stem_width] + config.hidden_sizes
        self.post_init()
        self._freeze_stages()

    def _stem_modules(self) -> list[nn.Module]:
        return [self.stem] if self.config.deep_stem else [self.conv1, self.bn1]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.config.frozen_stages < 0:
            return []
        return self._stem_modules() + [getattr(self, f"layer{i}") for i in range(1, self.config.frozen_stages + 1)]

    def _freeze_stages(self):
        for module in self._frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad = False

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but frozen stages, and every BatchNorm when `config.norm_eval`, stay in eval mode.

        Also (re)freezes the parameters of the frozen stages: loading weights replaces the parameters made in
        `__init__`, and `from_pretrained` ends with `eval()`."""
        super().train(mode)
        self._freeze_stages()
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.config.norm_eval:
                for module in self.modules():
                    if isinstance(module, BATCH_NORMS):
                        module.eval()
        return self

    def conv_norm_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """`(parent, conv name, norm name)` for every conv whose output goes only into the BatchNorm named next to it
        (stem, every block, every projection shortcut): the pairs that `fpn_seg.optimization.fold_batch_norm` merges."""
        pairs = []
        if self.config.deep_stem:
            pairs += [(self.stem, str(index), str(index + 1)) for index in (0, 3, 6)]
        else:
            pairs.append((self, "conv1", "bn1"))
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                names = ("1", "2") if isinstance(block, ResNetV1cBasicBlock) else ("1", "2", "3")
                pairs += [(block, f"conv{name}", f"bn{name}") for name in names]
                if block.downsample is not None:
                    conv_index = len(block.downsample) - 2  # after the optional AvgPool2d (V1d)
                    pairs.append((block.downsample, str(conv_index), str(conv_index + 1)))
        return pairs

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        """`pixel_values` (B, C, H, W) -> `feature_maps`: one (B, C_i, ceil(H / s_i), ceil(W / s_i)) per out feature.

        `hidden_states` (when asked) holds all five stage outputs, stem first.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if self.config.deep_stem:
            hidden_states = self.stem(pixel_values)
        else:
            hidden_states = self.relu(self.bn1(self.conv1(pixel_values)))
        hidden_states = self.maxpool(hidden_states)  # (B, stem_channels, H/4, W/4)
        stage_outputs = [hidden_states]
        checkpointing = self.training and torch.is_grad_enabled()
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):  # (B, C_stage, H/s, W/s) after the stage
                guard = RecomputationGuard() if checkpointing and block.gradient_checkpointing else None
                hidden_states = block(hidden_states, recomputation=guard)
            stage_outputs.append(hidden_states)
        feature_maps = tuple(
            output for name, output in zip(self.stage_names, stage_outputs) if name in self.out_features
        )
        hidden = tuple(stage_outputs) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden,) if hidden is not None else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden, attentions=None)


__all__ = ["ResNetV1cBackbone", "ResNetV1cPreTrainedModel"]
