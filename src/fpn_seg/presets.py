"""The four seed models of mmsegmentation's sem_fpn table as presets: their architecture, label policy, class names,
test scale and training settings, and the config and processor each one gives.
"""

from dataclasses import dataclass
from typing import Literal

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .image_processing_semantic_fpn import SemanticFPNImageProcessor
from .label_policy import LabelPolicy
from .label_sets import DATASET_CLASSES
from .processor_options import size_from_scale


@dataclass(frozen=True)
class SemanticFPNPreset:
    """One row of mmsegmentation's sem_fpn table: model, dataset, training and test settings.

    `test_scale` and `train_scale` are mmseg's `(long side, short side)` scales; `crop_size` is `(height, width)`.
    """

    name: str
    depth: int
    dataset: Literal["cityscapes", "ade20k"]
    crop_size: tuple[int, int]
    test_scale: tuple[int, int]
    max_iters: int
    batch_size: int
    reduce_labels: bool

    @property
    def num_labels(self) -> int:
        return len(DATASET_CLASSES[self.dataset])


PRESETS: dict[str, SemanticFPNPreset] = {
    preset.name: preset
    for preset in (
        SemanticFPNPreset("fpn_r50_512x1024_80k_cityscapes", 50, "cityscapes", (512, 1024), (2048, 1024), 80_000, 8, False),
        SemanticFPNPreset("fpn_r101_512x1024_80k_cityscapes", 101, "cityscapes", (512, 1024), (2048, 1024), 80_000, 8, False),
        SemanticFPNPreset("fpn_r50_512x512_160k_ade20k", 50, "ade20k", (512, 512), (2048, 512), 160_000, 16, True),
        SemanticFPNPreset("fpn_r101_512x512_160k_ade20k", 101, "ade20k", (512, 512), (2048, 512), 160_000, 16, True),
    )
}  # fmt: skip


def get_preset(name: str) -> SemanticFPNPreset:
    """The preset called `name` (one of mmseg's sem_fpn config names), or a `ValueError` listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown Semantic FPN preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


def preset_config(name: str, **kwargs) -> SemanticFPNConfig:
    """The architecture and label policy of one of the four seed models, by mmseg config name.

    `kwargs` override fields, e.g. narrower widths for tests:
    `preset_config("fpn_r50_512x1024_80k_cityscapes", neck_channels=32)`.
    """
    preset = get_preset(name)
    fields = {
        "backbone_config": kwargs.pop("backbone_config", None) or ResNetV1cConfig(depth=preset.depth),
        "id2label": dict(enumerate(DATASET_CLASSES[preset.dataset])),
        "reduce_labels": preset.reduce_labels,
    }
    return SemanticFPNConfig(**{**fields, **kwargs})


def preset_processor(name: str, **kwargs) -> SemanticFPNImageProcessor:
    """The test size and label policy of one of the seed models, e.g. `"fpn_r50_512x512_160k_ade20k"` -> size
    `{"shortest_edge": 512, "longest_edge": 2048}` (mmseg's scale (2048, 512)), `do_reduce_labels=True`; `kwargs`
    override options (`size` or its alias `scale` replaces the preset's)."""
    preset = get_preset(name)
    policy = LabelPolicy(reduce_labels=preset.reduce_labels)
    resize = {} if {"size", "scale"} & set(kwargs) else {"size": size_from_scale(preset.test_scale, name)}
    return SemanticFPNImageProcessor(**{**resize, **policy.processor_options(), **kwargs})


__all__ = ["PRESETS", "SemanticFPNPreset", "get_preset", "preset_config", "preset_processor"]
