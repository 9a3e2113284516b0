"""Configuration of the mmseg-style ResNet backbone (ResNetV1b / V1c / V1d).

This file is hub code: `save_pretrained` copies it next to the weights for `trust_remote_code` loading, so it imports
nothing from `fpn_seg` except its sibling hub files.
"""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin


@strict
class ResNetV1cConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a ResNet backbone laid out as mmsegmentation's `ResNetV1c` (and its `V1b` / `V1d` siblings), key
    for key, so that mmseg checkpoints load without renaming inside the backbone.

    Args:
        depth (`int`, defaults to 50):
            One of 18, 34 (basic blocks) or 50, 101, 152 (bottleneck blocks).
        num_channels (`int`, defaults to 3):
            Channels of the input image.
        stem_channels (`int`, defaults to 64):
            Output channels of the stem. The deep stem uses `stem_channels // 2`, `stem_channels // 2`,
            `stem_channels`.
        base_channels (`int`, defaults to 64):
            Planes of the first stage; stage `i` has `base_channels * 2**i` planes and outputs
            `planes * expansion` channels (expansion 1 for basic blocks, 4 for bottlenecks).
        deep_stem (`bool`, defaults to `True`):
            Three 3x3 convs instead of one 7x7 conv (V1c and V1d; V1b has `deep_stem=False`).
        avg_down (`bool`, defaults to `False`):
            Average-pool before the 1x1 downsample conv of the shortcut (V1d).
        strides (`list[int]`, defaults to `[1, 2, 2, 2]`):
            Stride of the first block of each stage.
        dilations (`list[int]`, defaults to `[1, 1, 1, 1]`):
            Dilation of the 3x3 convs of each stage.
        norm_eval (`bool`, defaults to `False`):
            Keep every BatchNorm in eval mode (running statistics frozen) even when the model trains. Useful when
            fine-tuning with small batches.
        frozen_stages (`int`, defaults to -1):
            Stages whose parameters get `requires_grad=False` and whose BatchNorms stay in eval mode: 0 freezes the
            stem, `k` the stem and stages 1..k. -1 freezes nothing.
        batch_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every BatchNorm.
        out_features / out_indices:
            Which of `stage_names = ["stem", "stage1", ..., "stage4"]` the backbone returns; default all four stages.

    Example:

    ```python
    >>> from fpn_seg import ResNetV1cBackbone, ResNetV1cConfig
    >>> backbone = ResNetV1cBackbone(ResNetV1cConfig(depth=101))  # mmseg's ResNetV1c-101
    ```
    """

    model_type = "resnet_v1c"
    block_depths: ClassVar[dict[int, tuple[str, tuple[int, ...]]]] = {
        18: ("basic", (2, 2, 2, 2)),
        34: ("basic", (3, 4, 6, 3)),
        50: ("bottleneck", (3, 4, 6, 3)),
        101: ("bottleneck", (3, 4, 23, 3)),
        152: ("bottleneck", (3, 8, 36, 3)),
    }

    depth: int = 50
    num_channels: int = 3
    stem_channels: int = 64
    base_channels: int = 64
    deep_stem: bool = True
    avg_down: bool = False
    strides: list[int] | tuple[int, ...] = (1, 2, 2, 2)
    dilations: list[int] | tuple[int, ...] = (1, 1, 1, 1)
    norm_eval: bool = False
    frozen_stages: int = -1
    batch_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        self.strides = list(self.strides)
        self.dilations = list(self.dilations)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, 5)]
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features = self.stage_names[1:]
        self.set_output_features_output_indices(out_indices=out_indices, out_features=out_features)
        super().__post_init__(**kwargs)

    def validate_depth(self):
        if self.depth not in self.block_depths:
            raise ValueError(
                f"depth={self.depth!r} is not supported; expected one of {sorted(self.block_depths)} (18/34 basic "
                "blocks, 50/101/152 bottlenecks)."
            )

    def validate_stages(self):
        """One stride and one dilation per stage (4), positive widths, `frozen_stages` in -1..4."""
        if len(self.strides) != 4 or len(self.dilations) != 4:
            raise ValueError(
                f"strides and dilations need one value per stage (4); got strides={list(self.strides)}, "
                f"dilations={list(self.dilations)}."
            )
        if min(*self.strides, *self.dilations) < 1 or min(self.stem_channels, self.base_channels) < 1:
            raise ValueError("strides, dilations, stem_channels and base_channels must be positive.")
        if self.deep_stem and self.stem_channels % 2:
            raise ValueError(f"the deep stem halves stem_channels; got an odd stem_channels={self.stem_channels}.")
        if not -1 <= self.frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4; got {self.frozen_stages}.")

    @property
    def block_type(self) -> str:
        """`"basic"` or `"bottleneck"`, from the depth."""
        return self.block_depths[self.depth][0]

    @property
    def stage_depths(self) -> tuple[int, ...]:
        """Blocks in each of the four stages, from the depth."""
        return self.block_depths[self.depth][1]

    @property
    def expansion(self) -> int:
        return 1 if self.block_type == "basic" else 4

    @property
    def hidden_sizes(self) -> list[int]:
        """Output channels of the four stages."""
        return [self.base_channels * 2**i * self.expansion for i in range(4)]


__all__ = ["ResNetV1cConfig"]
