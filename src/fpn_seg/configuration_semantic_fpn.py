"""Semantic FPN configuration, the label policy every other part reads, the presets of the four seed models, and
the atomic folder save that the model's and the processor's `save_pretrained` share.

Hub code: imported by the modeling and image-processing files and copied by `save_pretrained` for
`trust_remote_code`; it imports only its sibling hub files.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from transformers import PreTrainedConfig
from transformers.backbone_utils import consolidate_backbone_kwargs_to_config

from .configuration_resnet_v1c import ResNetV1cConfig
from .label_sets import DATASET_CLASSES


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


def encode_labels(
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    label_map: dict[int, int] | None = None,
) -> torch.Tensor:
    """Turn a raw annotation map (any integer tensor) into training ids: the one place where a label policy is applied.

    Order: `label_map` first (raw value -> training id; a value that the map does not name becomes `ignore_index`,
    as Cityscapes label ids that have no train id), then `reduce_labels` (ADE20K's `reduce_zero_label`: 0 -> ignore,
    `v` -> `v - 1`, `ignore_index` stays). Returns an int64 tensor of the same shape.
    """
    labels = labels.to(torch.int64)
    if label_map:
        lookup_size = max(max(label_map) + 1, int(labels.max()) + 1 if labels.numel() else 1)
        lookup = torch.full((lookup_size,), ignore_index, dtype=torch.int64)
        for raw, train in label_map.items():
            lookup[int(raw)] = int(train)
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"Label maps hold non-negative values; got a minimum of {int(labels.min())}.")
        labels = lookup[labels]
    if reduce_labels:
        ignored = labels == ignore_index
        labels = labels - 1
        labels[(labels == -1) | ignored] = ignore_index
    return labels


# ------------------------------------------------------------------------------------------------ atomic saving

# Weight files of an earlier model save, any variant, sharded or not: a new save retires them with its own files.
WEIGHT_FILE_NAME = re.compile(
    r"(model|pytorch_model|adapter_model|tf_model|flax_model)([.-][\w.-]+)?"
    r"\.(safetensors|bin|h5|msgpack)(\.index\.json)?"
)


def save_folder_atomically(
    save: Callable[[str], Any],
    save_directory: str | os.PathLike,
    commit_file: str,
    retire: re.Pattern | None = None,
) -> Any:
    """Run `save(folder)` into a fresh hidden folder inside `save_directory`, then move its files in, `commit_file`
    last. (Inside, not beside it: the renames then stay on one file system even when the folder is a mount point.)

    `commit_file` is the file without which the folder does not load (`config.json` for a model,
    `preprocessor_config.json` for a processor). Steps, and what a crash (or `kill -9`) at each step leaves:

    1. `save` writes into `<folder>/.saving-<random>` (the folder is created if missing). Killed here: the folder's
       files are untouched; the hidden folder stays behind and can be deleted.
    2. The folder's `commit_file`, then each file the new save replaces (same name, or matching `retire`: weight files
       of an earlier save), move into `<folder>/.previous-<random>`. From here until the end of step 3 the folder has
       no `commit_file`, so loading it fails with a missing-file error instead of loading a mix; the previous files
       are all in the `.previous` folder (move them back to restore the previous save).
    3. The new files move in (each `os.replace` is atomic on one file system), `commit_file` last.
    4. The hidden folders are removed.

    Other files of the folder (a processor's or a model's files, README.md, Trainer checkpoints...) are left alone.
    Returns what `save` returned.
    """
    target = Path(save_directory).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_pretrained: {target} is a file; expected a folder (created when missing).")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staging = _hidden_folder(target, "saving")
    try:
        result = save(str(staging))
        new_names = sorted(path.name for path in staging.iterdir())
        if commit_file not in new_names:
            raise RuntimeError(f"save_pretrained wrote no {commit_file} (wrote {new_names}); nothing was replaced.")
        _move_in(staging, target, new_names, commit_file, retire)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(target.iterdir()):
            target.rmdir()  # a failed first save leaves no folder
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _hidden_folder(target: Path, role: str) -> Path:
    """A new empty folder `.<role>-<random>` inside `target`, with the permissions of an ordinary folder."""
    folder = Path(tempfile.mkdtemp(prefix=f".{role}-", dir=target))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)  # mkdtemp makes a private (0700) folder
    return folder


def _move_in(staging: Path, target: Path, new_names: list[str], commit_file: str, retire: re.Pattern | None) -> None:
    """Steps 2 to 4 of `save_folder_atomically`: retire the replaced files, move the new ones in, commit last."""
    replaced = [
        name
        for name in sorted({commit_file, *new_names}, key=lambda name: name != commit_file)  # commit_file first
        if (target / name).exists()
    ]
    replaced += sorted(
        path.name
        for path in target.iterdir()
        if retire is not None and path.name not in replaced and path.is_file() and retire.fullmatch(path.name)
    )
    previous = _hidden_folder(target, "previous") if replaced else None
    moved_in: list[str] = []
    try:
        for name in replaced:
            os.replace(target / name, previous / name)
        for name in [name for name in new_names if name != commit_file] + [commit_file]:
            os.replace(staging / name, target / name)
            moved_in.append(name)
    except BaseException:  # an error (not a kill) in the middle: put the previous save back
        for name in moved_in:
            (target / name).unlink()
        for name in reversed(replaced):  # commit_file last
            if (previous / name).exists():
                os.replace(previous / name, target / name)
        if previous is not None and not any(previous.iterdir()):
            previous.rmdir()
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


class SemanticFPNConfig(PreTrainedConfig):
    r"""
    Configuration of [`SemanticFPNForSemanticSegmentation`]: a backbone, an FPN neck and the Semantic FPN head of
    Kirillov et al., "Panoptic Feature Pyramid Networks" (CVPR 2019), laid out as mmsegmentation's `sem_fpn` models.

    The config also holds the **label policy** (`ignore_index`, `reduce_labels`, `label_map`, `id2label`) that the
    image processor, the loss, the metric and the post-processing all read.

    Args:
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Any backbone config that `transformers.load_backbone` can build (e.g. a `ResNetConfig` or `ConvNextConfig`
            with four `out_features`). Defaults to a [`ResNetV1cConfig`] of depth 50 (mmseg's ResNetV1c-50).
        neck_channels (`int`, defaults to 256):
            Channels of every FPN level.
        head_channels (`int`, defaults to 128):
            Channels of the head's scale branches.
        feature_strides (`list[int]`, defaults to `[4, 8, 16, 32]`):
            Output stride of each backbone feature the head fuses; level `i` gets
            `max(1, log2(stride_i) - log2(stride_0))` conv blocks and is upsampled to the finest level.
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
        initializer_range (`float`, defaults to 0.02):
            Unused by the convolutional layers (they use mmseg's initialisations); kept for transformers utilities.
    """

    model_type = "semantic_fpn"
    loss_averages: ClassVar[tuple[str, ...]] = ("all_pixels", "non_ignored")

    backbone_config: dict | PreTrainedConfig | None = None
    neck_channels: int = 256
    head_channels: int = 128
    feature_strides: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    classifier_dropout: float = 0.1
    ignore_index: int = 255
    reduce_labels: bool = False
    label_map: dict[int, int] | dict[str, int] | None = None
    loss_average: str = "all_pixels"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.backbone_config = self._build_backbone_config(self.backbone_config, kwargs)
        self.feature_strides = list(self.feature_strides)
        if self.label_map is not None:
            self.label_map = {int(raw): int(train) for raw, train in self.label_map.items()}
        super().__post_init__(**kwargs)
        if self.id2label is not None:  # always the inverse of id2label (a stale one would outlive changed classes)
            self.label2id = {str(name): int(index) for index, name in self.id2label.items()}
        self._check()

    @staticmethod
    def _build_backbone_config(backbone_config, kwargs) -> PreTrainedConfig:
        if backbone_config is None:
            return ResNetV1cConfig()
        if isinstance(backbone_config, dict) and backbone_config.get("model_type", ResNetV1cConfig.model_type) == (
            ResNetV1cConfig.model_type
        ):
            # Built here rather than through `AutoConfig` so that a `trust_remote_code` load works without the
            # `resnet_v1c` type being registered.
            return ResNetV1cConfig.from_dict({k: v for k, v in backbone_config.items() if k != "model_type"})
        if isinstance(backbone_config, (dict, PreTrainedConfig)):
            backbone_config, _ = consolidate_backbone_kwargs_to_config(backbone_config=backbone_config)
            return backbone_config
        raise TypeError(
            f"SemanticFPNConfig: backbone_config must be a backbone config or its dict, got {type(backbone_config)}."
        )

    def _check(self):
        out_features = getattr(self.backbone_config, "out_features", None)
        if out_features is not None and len(out_features) != len(self.feature_strides):
            raise ValueError(
                f"SemanticFPNConfig: the backbone returns {len(out_features)} features ({out_features}) but "
                f"feature_strides has {len(self.feature_strides)} entries ({self.feature_strides}); set the "
                "backbone's out_features to one entry per stride."
            )
        if self.loss_average not in self.loss_averages:
            raise ValueError(
                f"SemanticFPNConfig: loss_average={self.loss_average!r}; expected one of {self.loss_averages}."
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"SemanticFPNConfig: classifier_dropout must be in [0, 1), got {self.classifier_dropout}.")
        if self.num_labels < 2:
            raise ValueError(f"SemanticFPNConfig: at least 2 labels are needed, got num_labels={self.num_labels}.")
        if 0 <= self.ignore_index < self.num_labels:
            raise ValueError(
                f"SemanticFPNConfig: ignore_index={self.ignore_index} is a class id (num_labels={self.num_labels}); "
                "pick a value outside 0..num_labels-1 (255 by convention)."
            )

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "SemanticFPNConfig":
        """The architecture and label policy of one of the four seed models, by mmseg config name.

        `kwargs` override fields, e.g. narrower widths for tests:
        `SemanticFPNConfig.from_preset("fpn_r50_512x1024_80k_cityscapes", neck_channels=32)`.
        """
        preset = get_preset(name)
        class_names = DATASET_CLASSES[preset.dataset]
        backbone_config = kwargs.pop("backbone_config", None) or ResNetV1cConfig(depth=preset.depth)
        fields = {
            "backbone_config": backbone_config,
            "id2label": dict(enumerate(class_names)),
            "reduce_labels": preset.reduce_labels,
        }
        fields.update(kwargs)
        return cls(**fields)

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Raw annotation map -> training ids under this config's label policy (see [`encode_labels`])."""
        return encode_labels(
            labels, ignore_index=self.ignore_index, reduce_labels=self.reduce_labels, label_map=self.label_map
        )


__all__ = [
    "PRESETS",
    "WEIGHT_FILE_NAME",
    "SemanticFPNConfig",
    "SemanticFPNPreset",
    "encode_labels",
    "get_preset",
    "save_folder_atomically",
]
