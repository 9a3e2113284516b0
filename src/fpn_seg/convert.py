"""Convert mmsegmentation `sem_fpn` checkpoints (and ImageNet ResNetV1c initialisations) into fpn_seg model folders.

Command line (`fpn-seg-convert`, or `python conversion/convert_mmseg_checkpoint.py`):

    fpn-seg-convert --model fpn_r50_512x1024_80k_cityscapes --output-dir converted/fpn_r50_cityscapes
    fpn-seg-convert --checkpoint local.pth --preset fpn_r50_512x512_160k_ade20k --output-dir out --verify ref.npz
    fpn-seg-convert --backbone resnet50_v1c --output-dir converted/resnet50_v1c
    fpn-seg-convert --converted out --verify ref.npz          # check a folder that was converted before

Safety and strictness:
- checkpoints are read with `torch.load(weights_only=True)` only; a file that needs arbitrary unpickling is refused;
- a file named `<name>-<hex>.pth` (the model-zoo convention) must have a sha256 starting with `<hex>`;
- every key is mapped exactly once onto the target model (see `mmseg_state_dict`), shapes checked;
- mmseg's class names (`meta["CLASSES"]`, or mmseg 1.x's `meta["dataset_meta"]["classes"]`), when present, must equal
  the preset's;
- the output folder is written under a temporary sibling name and renamed into place at the end, so a refusal
  leaves nothing behind; an existing, non-empty output folder is only replaced with `overwrite=True`.

Starting a training run from a converted ImageNet backbone: [`semantic_fpn_from_pretrained_backbone`].
"""

import argparse
import hashlib
import json
import os
import pickle
import re
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from . import atomic
from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .label_sets import DATASET_CLASSES
from .mmseg_state_dict import (
    CheckpointMismatchError,
    convert_mmseg_backbone_state_dict,
    convert_mmseg_state_dict,
    strip_module_prefix,
)
from .modeling_resnet_v1c import ResNetV1cBackbone
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from .presets import PRESETS, SemanticFPNPreset, get_preset, preset_config, preset_processor

_MMSEG_ZOO = "https://download.openmmlab.com/mmsegmentation/v0.5/sem_fpn"
_MMSEG_CONFIGS = "https://github.com/open-mmlab/mmsegmentation/blob/main/configs/sem_fpn"
_OFFICIAL_WIDTHS = {"stem_channels": 64, "base_channels": 64, "neck_channels": 256, "head_channels": 128}
# `<anything>-<8 to 64 hex digits>.pth`: the model-zoo file name convention (as `torch.hub`'s `check_hash`).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


# --------------------------------------------------------------------------------------------------- known files


class _DownloadableFile:
    """A file published at `url` whose name ends in `-<sha256 prefix>.pth`."""

    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        return sha256_prefix_in_name(self.filename)


@dataclass(frozen=True)
class OfficialCheckpoint(_DownloadableFile):
    """One row of mmsegmentation's sem_fpn model-zoo table (`configs/sem_fpn/README.md`, `metafile.yaml`).

    `miou` is single-scale whole-image mIoU on the validation set, `miou_ms_flip` the multi-scale + flip one (see
    `SEMANTIC_FPN.md`); `memory_gb` and `fps` are mmseg's training memory and V100 inference speed.
    """

    preset: str
    mmseg_v1_config: str
    url: str
    miou: float
    miou_ms_flip: float
    memory_gb: float
    fps: float


    @property
    def preset_info(self) -> SemanticFPNPreset:
        return get_preset(self.preset)


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    row.preset: row
    for row in (
        OfficialCheckpoint(
            "fpn_r50_512x1024_80k_cityscapes", "fpn_r50_4xb2-80k_cityscapes-512x1024",
            f"{_MMSEG_ZOO}/fpn_r50_512x1024_80k_cityscapes/fpn_r50_512x1024_80k_cityscapes_20200717_021437-94018a0d.pth",
            74.52, 76.08, 2.8, 13.54,
        ),
        OfficialCheckpoint(
            "fpn_r101_512x1024_80k_cityscapes", "fpn_r101_4xb2-80k_cityscapes-512x1024",
            f"{_MMSEG_ZOO}/fpn_r101_512x1024_80k_cityscapes/fpn_r101_512x1024_80k_cityscapes_20200717_012416-c5800d4c.pth",
            75.80, 77.40, 3.9, 10.29,
        ),
        OfficialCheckpoint(
            "fpn_r50_512x512_160k_ade20k", "fpn_r50_4xb4-160k_ade20k-512x512",
            f"{_MMSEG_ZOO}/fpn_r50_512x512_160k_ade20k/fpn_r50_512x512_160k_ade20k_20200718_131734-5b5a6ab9.pth",
            37.49, 39.09, 4.9, 55.77,
        ),
        OfficialCheckpoint(
            "fpn_r101_512x512_160k_ade20k", "fpn_r101_4xb4-160k_ade20k-512x512",
            f"{_MMSEG_ZOO}/fpn_r101_512x512_160k_ade20k/fpn_r101_512x512_160k_ade20k_20200718_131734-306b5004.pth",
            39.35, 40.72, 5.9, 40.58,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class ImageNetBackbone(_DownloadableFile):
    """An ImageNet initialisation named `open-mmlab://<name>` in mmseg configs (URL from mmcv's `open_mmlab.json`)."""

    name: str
    depth: int
    url: str



IMAGENET_BACKBONES: dict[str, ImageNetBackbone] = {
    backbone.name: backbone
    for backbone in (
        ImageNetBackbone("resnet50_v1c", 50, "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth"),
        ImageNetBackbone("resnet101_v1c", 101, "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth"),
    )
}  # fmt: skip


def get_official_checkpoint(name: str) -> OfficialCheckpoint:
    """The model-zoo row for a preset name (`fpn_r50_512x1024_80k_cityscapes`) or its mmseg 1.x config name
    (`fpn_r50_4xb2-80k_cityscapes-512x1024`)."""
    for row in OFFICIAL_CHECKPOINTS.values():
        if name in (row.preset, row.mmseg_v1_config):
            return row
    known = ", ".join(OFFICIAL_CHECKPOINTS)
    raise ConversionError(f"--model {name!r} is not one of the sem_fpn model-zoo checkpoints: {known}.")


def get_imagenet_backbone(name: str) -> ImageNetBackbone:
    """`resnet50_v1c` / `resnet101_v1c`, also written `open-mmlab://resnet50_v1c` as in mmseg configs."""
    key = name.removeprefix("open-mmlab://")
    if key not in IMAGENET_BACKBONES:
        raise ConversionError(f"--backbone {name!r} is not known; expected one of {', '.join(IMAGENET_BACKBONES)}.")
    return IMAGENET_BACKBONES[key]


# ------------------------------------------------------------------------------------------------------ errors


class ConversionError(ValueError):
    """The conversion was refused; the message says which input is wrong and what was expected."""


class UnsafeCheckpointError(ConversionError):
    """The file cannot be read with `torch.load(weights_only=True)` (it needs arbitrary unpickling)."""


class ChecksumError(ConversionError):
    """The file's sha256 does not start with the prefix that its name (or the model zoo) promises."""


class OutputExistsError(ConversionError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


# -------------------------------------------------------------------------------------------- fetching, hashing


def sha256_prefix_in_name(name: str) -> str | None:
    """The hash prefix of a model-zoo file name (`..._021437-94018a0d.pth` -> `94018a0d`), or `None`."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256_prefix(path: Path, expected_prefix: str | None) -> str:
    """The file's sha256; raises [`ChecksumError`] when it does not start with `expected_prefix`."""
    digest = file_sha256(path)
    if expected_prefix is not None and not digest.startswith(expected_prefix):
        raise ChecksumError(
            f"{path}: sha256 {digest[:16]}... does not start with {expected_prefix!r}, the hash prefix of the "
            "expected file. The file is corrupt, truncated, or a different checkpoint; nothing was written."
        )
    return digest


def _is_url(path_or_url: str) -> bool:
    """http(s) URLs, and `file://` ones (a local mirror of the model zoo) which take the same download path."""
    return urlparse(str(path_or_url)).scheme in ("http", "https", "file")


def fetch_checkpoint(path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path for `path_or_url`: local files as they are; URLs downloaded once (with a progress bar) into the
    torch hub cache (`<torch.hub.get_dir()>/checkpoints`, as `torch.hub.load_state_dict_from_url`)."""
    if not _is_url(str(path_or_url)):
        path = Path(path_or_url).expanduser()
        if not path.is_file():
            raise ConversionError(f"--checkpoint {str(path_or_url)!r}: no such file.")
        return path
    url = str(path_or_url)
    cache = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    destination = cache / Path(urlparse(url).path).name
    if not destination.is_file():
        print(f"Downloading {url} to {destination}", file=sys.stderr)
        prefix = sha256_prefix_in_name(url)
        try:  # checks the sha256 prefix of the download itself and removes the partial file on failure
            torch.hub.download_url_to_file(url, str(destination), hash_prefix=prefix, progress=True)
        except RuntimeError as error:
            if "hash" not in str(error):
                raise
            raise ChecksumError(f"{url}: the downloaded file's sha256 does not start with {prefix!r}.") from None
        except OSError as error:  # URLError included
            raise ConversionError(f"{url}: download failed ({error}).") from None
    return destination


# ----------------------------------------------------------------------------------------------------- loading


@dataclass
class MMSegCheckpoint:
    """What a checkpoint file holds: the tensors (`module.` stripped) and mmseg's `meta` dict (or `{}`)."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)


def _numpy_scalar_globals() -> list:
    """Globals needed to rebuild plain numpy scalars (numbers in `meta`, e.g. scores); safe to allowlist."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [np.float64, np.float32, np.int64, np.int32, np.bool_]
    return [scalar, np.dtype, *{type(np.dtype(kind)) for kind in dtypes}]


def _unpickling_refusal(path: Path, error: Exception) -> UnsafeCheckpointError:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip-format file: fall back to the unpickler's own words
        unsafe = []
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(error))
    reason = f"it references {', '.join(unsafe)}" if unsafe else (detail.group(1) if detail else str(error)[:300])
    return UnsafeCheckpointError(
        f"{path}: refused. The file cannot be read with torch.load(weights_only=True): {reason}. Loading it would "
        "need arbitrary unpickling (weights_only=False), which can run code from the file, so this converter never "
        "does it. Re-save the file as plain tensors from a trusted environment, e.g. "
        "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth'), and convert that."
    )


def load_checkpoint(path: str | os.PathLike) -> MMSegCheckpoint:
    """Read a checkpoint with `torch.load(weights_only=True)`; `{"state_dict": ..., "meta": ...}` or a bare dict.

    `optimizer` and other top-level entries are ignored. Raises [`UnsafeCheckpointError`] for a file that needs
    arbitrary unpickling and [`ConversionError`] for one that holds no tensor dict.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _unpickling_refusal(path, error) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({error}).") from None
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path}: expected a dict of tensors or {{'state_dict': ...}}, got {type(checkpoint)}.")
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"{path}: checkpoint['state_dict'] is a {type(state_dict)}, expected a dict of tensors.")
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    not_tensors = sorted(str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ConversionError(
            f"{path}: the state dict holds entries that are not tensors: {', '.join(not_tensors[:10])}. Expected "
            "mmseg's {'state_dict': {name: tensor}, 'meta': {...}} or a bare {name: tensor} dict."
        )
    try:
        state_dict = strip_module_prefix(state_dict)
    except ValueError as error:
        raise ConversionError(f"{path}: {error}") from None
    return MMSegCheckpoint(path, state_dict, dict(meta) if isinstance(meta, Mapping) else {})


def check_class_names(meta: Mapping, preset: SemanticFPNPreset, source: str) -> bool:
    """Compare mmseg's class names (`meta["CLASSES"]` of mmseg 0.x, `meta["dataset_meta"]["classes"]` of mmseg 1.x;
    stripped) with the preset's; `False` when the checkpoint has none."""
    classes, where = meta.get("CLASSES"), "meta['CLASSES']"
    if classes is None and isinstance(meta.get("dataset_meta"), Mapping):
        classes, where = meta["dataset_meta"].get("classes"), "meta['dataset_meta']['classes']"
    if classes is None:
        return False
    found = [str(name).strip() for name in classes]
    expected = list(DATASET_CLASSES[preset.dataset])
    if found != expected:
        differences = [
            f"{index}: {a!r} != {b!r}" for index, (a, b) in enumerate(zip(found, expected)) if a != b
        ][:5]
        raise ConversionError(
            f"{source}: {where} ({len(found)} names) does not match the {len(expected)} {preset.dataset} "
            f"classes of preset {preset.name!r}" + (f" ({'; '.join(differences)})" if differences else "") + "."
        )
    return True


# ------------------------------------------------------------------------------------ architecture from shapes


def _dim(state_dict: Mapping[str, torch.Tensor], key: str, dim: int, default: int) -> int:
    """`state_dict[key].shape[dim]`, or `default` when the key is absent (the strict mapping reports it later)."""
    value = state_dict.get(key)
    return int(value.shape[dim]) if value is not None and value.dim() > dim else default


def infer_resnet_depth(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> int | None:
    """ResNet depth from the number of blocks per stage (`<prefix>layer<s>.<block>.*` keys), or `None`."""
    pattern = re.compile(rf"^{re.escape(prefix)}layer([1-4])\.(\d+)\.")
    blocks = [0, 0, 0, 0]
    for key in state_dict:
        match = pattern.match(key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], block + 1)
    bottleneck = any(key.startswith(f"{prefix}layer1.0.conv3.") for key in state_dict)
    for depth, (block_type, stage_depths) in ResNetV1cConfig.block_depths.items():
        if tuple(blocks) == stage_depths and (block_type == "bottleneck") == bottleneck:
            return depth
    return None


def infer_backbone_config(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "", depth: int | None = None, source: str = "checkpoint"
) -> ResNetV1cConfig:
    """A [`ResNetV1cConfig`] whose depth and widths (stem, base) are read from the shapes of a ResNetV1c state dict.

    `depth`, when given, must agree with the keys; when the keys fit no known depth, `depth` is used and the strict
    mapping reports the missing or unexpected blocks.
    """
    found = infer_resnet_depth(state_dict, prefix)
    if depth is not None and found is not None and found != depth:
        raise ConversionError(f"{source}: the keys describe a ResNet-{found}, but ResNet-{depth} was asked for.")
    depth = depth or found
    if depth is None:
        raise ConversionError(
            f"{source}: cannot tell the ResNet depth from the keys (no complete {prefix}layer1..4 blocks); "
            "give it explicitly (--backbone-depth)."
        )
    return ResNetV1cConfig(
        depth=depth,
        stem_channels=_dim(state_dict, f"{prefix}stem.6.weight", 0, _OFFICIAL_WIDTHS["stem_channels"]),
        base_channels=_dim(state_dict, f"{prefix}layer1.0.conv1.weight", 0, _OFFICIAL_WIDTHS["base_channels"]),
    )


def infer_semantic_fpn_config(
    state_dict: Mapping[str, torch.Tensor], preset_name: str, source: str = "checkpoint"
) -> SemanticFPNConfig:
    """The preset's config (labels, label policy) with the depth and widths read from the state dict's shapes.

    Official checkpoints give the preset's own architecture; narrowed ones (e.g. the `_w16` reference fixtures) give
    their narrower widths. The depth and the class count must match the preset.
    """
    preset = get_preset(preset_name)
    backbone_config = infer_backbone_config(state_dict, "backbone.", preset.depth, source)
    num_classes = _dim(state_dict, "decode_head.conv_seg.weight", 0, preset.num_labels)
    if num_classes != preset.num_labels:
        raise ConversionError(
            f"{source}: the classifier (decode_head.conv_seg) has {num_classes} classes, but preset {preset_name!r} "
            f"({preset.dataset}) has {preset.num_labels}."
        )
    return preset_config(
        preset_name,
        backbone_config=backbone_config,
        neck_channels=_dim(state_dict, "neck.lateral_convs.0.conv.weight", 0, _OFFICIAL_WIDTHS["neck_channels"]),
        head_channels=_dim(state_dict, "decode_head.conv_seg.weight", 1, _OFFICIAL_WIDTHS["head_channels"]),
    )


def architecture_widths(config: SemanticFPNConfig) -> dict[str, int]:
    """The widths that distinguish the official architecture from a narrowed one."""
    return {
        "stem_channels": config.backbone_config.stem_channels,
        "base_channels": config.backbone_config.base_channels,
        "neck_channels": config.neck_channels,
        "head_channels": config.head_channels,
    }


# ------------------------------------------------------------------------------------------------ building


def _materialise(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give a meta-device `model` the (already strictly checked) `weights`: contiguous, in the model's dtypes."""
    targets = model.state_dict()
    tensors = {key: value.to(targets[key].dtype).contiguous() for key, value in weights.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def build_semantic_fpn(state_dict: Mapping[str, torch.Tensor], config: SemanticFPNConfig, source: str):
    """A [`SemanticFPNForSemanticSegmentation`] holding the mmseg `state_dict`; built on the meta device (no random
    initialisation), mapped strictly (raises [`CheckpointMismatchError`])."""
    with torch.device("meta"):
        model = SemanticFPNForSemanticSegmentation(config)
    return _materialise(model, convert_mmseg_state_dict(state_dict, model, source=source))


def build_backbone(state_dict: Mapping[str, torch.Tensor], config: ResNetV1cConfig, source: str):
    """A [`ResNetV1cBackbone`] holding an ImageNet ResNetV1c state dict (`fc.*` dropped), mapped strictly."""
    with torch.device("meta"):
        backbone = ResNetV1cBackbone(config)
    return _materialise(backbone, convert_mmseg_backbone_state_dict(state_dict, backbone, source=source))


# ---------------------------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class LogitsComparison:
    """Our logits against a reference `.npz` (`pixel_values` (B, 3, H, W) in, `logits` (B, N, H, W) expected)."""

    reference: str
    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float  # fraction of the B * H * W pixels where both argmaxes agree
    num_pixels: int

    def summary(self) -> str:
        agreeing = round(self.argmax_agreement * self.num_pixels)
        return (
            f"verify {self.reference}: logits {self.shape}, max abs diff {self.max_abs_diff:.3e}, mean abs diff "
            f"{self.mean_abs_diff:.3e}, argmax agreement {100 * self.argmax_agreement:.4f}% "
            f"({agreeing}/{self.num_pixels} pixels)"
        )


def compare_with_reference(model: nn.Module, reference: str | os.PathLike) -> LogitsComparison:
    """Run `model` (eval, float32, CPU) on the reference's `pixel_values` and compare with its `logits`."""
    reference = Path(reference)
    try:
        arrays = np.load(reference)
        pixel_values, expected = arrays["pixel_values"], arrays["logits"]
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(
            f"--verify {reference}: expected an .npz with 'pixel_values' (B, 3, H, W) and 'logits' (B, N, H, W) "
            f"({error})."
        ) from None
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(pixel_values).float()).logits
    if tuple(logits.shape) != tuple(expected.shape):
        raise ConversionError(
            f"--verify {reference}: the model gives logits of shape {tuple(logits.shape)}, the reference "
            f"{tuple(expected.shape)} (different class count or input size)."
        )
    expected = torch.from_numpy(expected).float()
    difference = (logits - expected).abs()
    agreement = (logits.argmax(1) == expected.argmax(1)).float()
    return LogitsComparison(
        reference=reference.name,
        shape=tuple(logits.shape),
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        argmax_agreement=float(agreement.mean()),
        num_pixels=agreement.numel(),
    )


def verify_converted(folder: str | os.PathLike, reference: str | os.PathLike) -> LogitsComparison:
    """Load a converted folder with `from_pretrained` and compare it with a reference `.npz`."""
    model = SemanticFPNForSemanticSegmentation.from_pretrained(str(folder))
    return compare_with_reference(model, reference)


# ------------------------------------------------------------------------------------------ atomic output folder


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty `output_dir` unless `overwrite` (and anything that is not a folder)."""
    atomic.check_output_dir(output_dir, overwrite, refuse=OutputExistsError)


def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> ContextManager[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `output_dir` by renames, on any
    error it is removed (with the parent folders this call created), so a failed conversion leaves nothing
    (see `fpn_seg.atomic.atomic_output_dir`)."""
    return atomic.atomic_output_dir(output_dir, overwrite, refuse=OutputExistsError)


# ---------------------------------------------------------------------------------------------------- cards


_CITATION = """```bibtex
@inproceedings{kirillov2019panoptic,
  title     = {Panoptic Feature Pyramid Networks},
  author    = {Kirillov, Alexander and Girshick, Ross and He, Kaiming and Doll{\\'a}r, Piotr},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}
@misc{mmseg2020,
  title        = {{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},
  author       = {MMSegmentation Contributors},
  howpublished = {\\url{https://github.com/open-mmlab/mmsegmentation}},
  year         = {2020}
}
```"""

_DATASET_TITLES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K (ADEChallengeData2016)"}

_MODEL_CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: image-segmentation
tags:
- semantic-segmentation
- semantic-fpn
- mmsegmentation
- fpn_seg
- {dataset}
{model_index}---

# Semantic FPN, ResNet-{depth}, {dataset_title}

Semantic FPN (the semantic branch of Panoptic FPN, Kirillov et al., CVPR 2019) with a ResNetV1c-{depth} backbone,
trained by [mmsegmentation](https://github.com/open-mmlab/mmsegmentation) on {dataset_title}
(config [`{preset}`]({config_url})), converted to a Hugging Face `transformers` model with
`fpn_seg` ({num_labels} classes, `id2label` in `config.json`).

{architecture_note}

## mmsegmentation model-zoo row

| Method | Backbone | Crop size | Lr schd | Mem (GB) | Inf time (fps) | mIoU | mIoU (ms+flip) |
|---|---|---|---:|---:|---:|---:|---:|
{table_row}

## What it reproduces

{reproduces}

## How it was converted and verified

{verification}

## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

repo = "{repo}"
processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo, trust_remote_code=True).eval()

image = Image.open("street.png").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print({{model.config.id2label[int(i)] for i in segmentation.unique()}})
```

With `fpn_seg` installed, `trust_remote_code` is not needed. The image processor resizes to the dataset's test scale
({test_scale}, keeping the aspect ratio) and normalises as mmseg does{reduce_labels_note}.

## License

The weights are mmsegmentation's, released under the Apache License 2.0; this conversion keeps that license.
The training data ({dataset_title}) has its own terms of use.

## Citation

{citation}
"""

_BACKBONE_CARD = """---
license: apache-2.0
library_name: transformers
tags:
- backbone
- resnet
- mmsegmentation
- fpn_seg
---

# ResNetV1c-{depth} (ImageNet), the initialisation of mmseg's sem_fpn models

The ImageNet-trained ResNetV1c-{depth} that mmsegmentation configs name `open-mmlab://{name}`
(mmcv's model zoo), converted to an `fpn_seg` `ResNetV1cBackbone` (deep stem, stride on the 3x3 conv; the ImageNet
classifier `fc.*` is dropped).

Source: `{source}` (sha256 `{sha256}`{hash_note}); {num_tensors} tensors mapped one to one, strictly.

## Start a Semantic FPN training run from it

```python
from fpn_seg.convert import semantic_fpn_from_pretrained_backbone

model = semantic_fpn_from_pretrained_backbone("{repo}", preset="{example_preset}")  # neck and head: fresh init
```

`load_pretrained_backbone(model, "{repo}")` does the same for a model you already built. As a plain backbone,
`fpn_seg.ResNetV1cBackbone.from_pretrained("{repo}")` returns the four stage features (strides 4 to 32); from the hub
without `fpn_seg`, `AutoBackbone.from_pretrained(repo_id, trust_remote_code=True)`. (transformers 5.x's
`AutoBackbone.from_pretrained` does not accept a local folder: it asks the hub whether the path is a repo.)

## License

Apache License 2.0 (as mmcv / mmsegmentation).
"""


def _model_index(row: OfficialCheckpoint, preset: SemanticFPNPreset) -> str:
    """The hub's `model-index` metadata: mmseg's reported figures, attributed to the model zoo."""
    return (
        "model-index:\n"
        f"- name: {preset.name}\n"
        "  results:\n"
        "  - task: {type: image-segmentation, name: Semantic Segmentation}\n"
        f"    dataset: {{type: {preset.dataset}, name: {_DATASET_TITLES[preset.dataset]} val, split: validation}}\n"
        "    metrics:\n"
        f"    - {{type: mean_iou, value: {row.miou}, name: mIoU (single scale)}}\n"
        f"    - {{type: mean_iou, value: {row.miou_ms_flip}, name: mIoU (multi-scale + flip)}}\n"
        f"    source: {{name: mmsegmentation model zoo, url: '{_MMSEG_CONFIGS}'}}\n"
    )


@dataclass
class ConversionReport:
    """What a conversion did: written where, from what, how it was checked."""

    output_dir: Path
    source: str
    sha256: str
    sha256_prefix_checked: str | None
    num_tensors: int
    preset: str | None = None
    official_architecture: bool = True
    class_names_checked: bool = False
    verification: LogitsComparison | None = None
    widths: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"wrote {self.output_dir}",
            f"  source {self.source} (sha256 {self.sha256[:16]}...; "
            f"prefix check: {self.sha256_prefix_checked or 'none'})",
            f"  {self.num_tensors} tensors mapped strictly; meta CLASSES checked: {self.class_names_checked}",
        ]
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        return "\n".join(lines)


def render_model_card(report: ConversionReport, repo: str) -> str:
    """The `README.md` of a converted sem_fpn folder: model-zoo row, what it reproduces, how it was checked."""
    preset = get_preset(report.preset)
    row = OFFICIAL_CHECKPOINTS[report.preset]
    dataset_title = _DATASET_TITLES[preset.dataset]
    crop = f"{preset.crop_size[0]}x{preset.crop_size[1]}"
    table_row = (
        f"| FPN | R-{preset.depth} | {crop} | {preset.max_iters} | {row.memory_gb} | {row.fps} | {row.miou:.2f} | "
        f"{row.miou_ms_flip:.2f} |"
    )
    if report.official_architecture:
        architecture_note = "Architecture: the official one (stem 64, base width 64, FPN 256 channels, head 128)."
        reproduces = (
            f"The converted model computes the same logits as mmseg's (see below), so evaluated like mmseg on the "
            f"{dataset_title} validation set (whole image at test scale {preset.test_scale[0]}x{preset.test_scale[1]}"
            f", mean IoU over the dataset) it should give the table's mIoU **{row.miou:.2f}** (single scale) and "
            f"**{row.miou_ms_flip:.2f}** with multi-scale + flip testing. These figures are mmsegmentation's; this "
            "conversion did not re-run the evaluation."
        )
        if report.sha256_prefix_checked != row.sha256_prefix:
            reproduces += (
                f" **Caveat:** the source file was not identified as the model zoo's `{row.filename}` (whose sha256 "
                f"starts with `{row.sha256_prefix}`), so the figures hold only if these are its weights."
            )
    else:
        widths = ", ".join(f"{key} {value}" for key, value in report.widths.items())
        architecture_note = (
            f"**Not the official width**: this file was converted from a narrowed checkpoint ({widths}); it has the "
            "sem_fpn layout and label set of the preset, but the table's figures do not apply to it."
        )
        reproduces = "Nothing from the table: the weights are not the model zoo's (see the note above)."
    verification = [
        f"- Source: `{report.source}`, sha256 `{report.sha256}`"
        + (
            f" (its prefix `{report.sha256_prefix_checked}` matches the model-zoo file name)."
            if report.sha256_prefix_checked
            else " (no hash prefix to check)."
        ),
        "- Read with `torch.load(weights_only=True)`; every one of the "
        f"{report.num_tensors} tensors mapped exactly once onto the model, shapes checked (no missing or "
        "unexpected key).",
        "- `meta['CLASSES']` equals the label names in `config.json`."
        if report.class_names_checked
        else "- The checkpoint holds no `meta['CLASSES']`; label names come from the preset.",
        "- fpn_seg's model matches mmsegmentation 1.2.2's `sem_fpn` logits on reference inputs to <= 1e-5 (its "
        "test suite, with the real mmseg model code).",
    ]
    if report.sha256_prefix_checked == row.sha256_prefix:
        verification.insert(0, f"- This is the model zoo's file [`{row.filename}`]({row.url}).")
    if report.verification is not None:
        verification.append(
            f"- Logits of this folder on `{report.verification.reference}` (reference made with mmsegmentation): "
            f"max abs diff **{report.verification.max_abs_diff:.2e}**, argmax agreement "
            f"**{100 * report.verification.argmax_agreement:.4f}%** of {report.verification.num_pixels} pixels."
        )
    return _MODEL_CARD.format(
        dataset=preset.dataset,
        model_index=_model_index(row, preset) if report.official_architecture else "",
        depth=preset.depth,
        dataset_title=dataset_title,
        preset=preset.name,
        config_url=f"{_MMSEG_CONFIGS}/{row.mmseg_v1_config}.py",
        num_labels=preset.num_labels,
        architecture_note=architecture_note,
        table_row=table_row,
        reproduces=reproduces,
        verification="\n".join(verification),
        repo=repo,
        test_scale=f"{preset.test_scale[0]}x{preset.test_scale[1]}",
        reduce_labels_note=(
            "; `do_reduce_labels=True`: ADE20K annotations (0 = other) map 0 -> 255 and v -> v - 1"
            if preset.reduce_labels
            else ""
        ),
        citation=_CITATION,
    )


# ------------------------------------------------------------------------------------------- conversions


def _save_image_processor(preset_name: str, folder: Path) -> None:
    from .image_processing_semantic_fpn import SemanticFPNImageProcessor

    preset_processor(preset_name).save_pretrained(str(folder))


def convert_semantic_fpn(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str | None = None,
    model: str | None = None,
    verify: str | os.PathLike | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> ConversionReport:
    """Convert a mmseg sem_fpn checkpoint into a complete model folder.

    Args:
        checkpoint: local path or URL of the `.pth`; `None` with `model` downloads the model-zoo file.
        output_dir: the folder to write (refused when it exists and is not empty, unless `overwrite`).
        preset: preset name (labels, label policy, test scale); implied by `model`.
        model: a model-zoo name: the file must then have the model zoo's sha256 prefix.
        verify: a reference `.npz`; the written folder is loaded back and its logits compared. A max abs diff above
            `tolerance` refuses the conversion.
        repo_id: the hub name used in the model card's usage snippet (defaults to the output folder).

    Raises [`ConversionError`] (and its subclasses) or [`CheckpointMismatchError`]; nothing is written then.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir.absolute(), overwrite)
    official = get_official_checkpoint(model) if model is not None else None
    if official is not None and preset not in (None, official.preset):
        raise ConversionError(f"--model {model} is preset {official.preset!r}, not --preset {preset!r}.")
    preset = official.preset if official is not None else preset
    if preset is None:
        raise ConversionError(f"Give --model NAME, or --checkpoint with --preset NAME (one of: {', '.join(PRESETS)}).")
    get_preset(preset)
    path = fetch_checkpoint(checkpoint if checkpoint is not None else official.url)
    expected_prefix = official.sha256_prefix if official is not None else sha256_prefix_in_name(path.name)
    sha256 = check_sha256_prefix(path, expected_prefix)

    loaded = load_checkpoint(path)
    source = str(checkpoint if checkpoint is not None else official.url)
    classes_checked = check_class_names(loaded.meta, get_preset(preset), source=str(path))
    config = infer_semantic_fpn_config(loaded.state_dict, preset, source=str(path))
    network = build_semantic_fpn(loaded.state_dict, config, source=str(path))
    widths = architecture_widths(config)
    report = ConversionReport(
        output_dir=output_dir,
        source=source,
        sha256=sha256,
        sha256_prefix_checked=expected_prefix,
        num_tensors=len(loaded.state_dict),
        preset=preset,
        official_architecture=widths == _OFFICIAL_WIDTHS,
        class_names_checked=classes_checked,
        widths=widths,
    )
    with atomic_output_dir(output_dir, overwrite) as staging:
        network.save_pretrained(str(staging))
        _save_image_processor(preset, staging)
        if verify is not None:
            report.verification = verify_converted(staging, verify)
            if not report.verification.max_abs_diff <= tolerance:
                raise ConversionError(
                    f"--verify {verify}: max abs diff {report.verification.max_abs_diff:.3e} exceeds the tolerance "
                    f"{tolerance:g}; the converted model does not reproduce the reference. Nothing was written."
                )
        (staging / "README.md").write_text(render_model_card(report, repo_id or str(output_dir)))
    return report


def convert_imagenet_backbone(
    checkpoint: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    backbone: str | None = None,
    depth: int | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> ConversionReport:
    """Convert an ImageNet ResNetV1c file (`open-mmlab://resnet50_v1c`, bare `stem.*`/`layer*` keys, `fc.*` dropped)
    into a backbone folder that `AutoBackbone.from_pretrained` and [`semantic_fpn_from_pretrained_backbone`] load.

    `backbone` names a known file (its sha256 prefix is then required, and `checkpoint` may point to a local copy);
    otherwise `checkpoint` is required and `depth` is checked against (or read from) the keys.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir.absolute(), overwrite)
    known = get_imagenet_backbone(backbone) if backbone is not None else None
    if known is not None:
        if depth is not None and depth != known.depth:
            raise ConversionError(f"--backbone {backbone} is ResNet-{known.depth}, not --backbone-depth {depth}.")
        depth = known.depth
    elif checkpoint is None:
        raise ConversionError("Backbone mode needs --backbone NAME or --checkpoint PATH (with --backbone-depth).")
    path = fetch_checkpoint(checkpoint if checkpoint is not None else known.url)
    expected_prefix = known.sha256_prefix if known is not None else sha256_prefix_in_name(path.name)
    sha256 = check_sha256_prefix(path, expected_prefix)
    loaded = load_checkpoint(path)
    keys = {key.removeprefix("backbone."): value for key, value in loaded.state_dict.items()}
    config = infer_backbone_config(keys, "", depth, source=str(path))
    network = build_backbone(loaded.state_dict, config, source=str(path))
    source = str(checkpoint if checkpoint is not None else known.url)
    report = ConversionReport(output_dir, source, sha256, expected_prefix, num_tensors=len(network.state_dict()))
    example = next((name for name, item in PRESETS.items() if item.depth == config.depth), next(iter(PRESETS)))
    with atomic_output_dir(output_dir, overwrite) as staging:
        network.save_pretrained(str(staging))
        card = _BACKBONE_CARD.format(
            depth=config.depth,
            name=known.name if known is not None else f"resnet{config.depth}_v1c",
            source=source,
            sha256=sha256,
            hash_note=f", prefix `{expected_prefix}` checked" if expected_prefix else "",
            num_tensors=report.num_tensors,
            repo=repo_id or str(output_dir),
            example_preset=example,
        )
        (staging / "README.md").write_text(card)
    return report


# ----------------------------------------------------------------------------- training from an ImageNet backbone


def load_pretrained_backbone(model: SemanticFPNForSemanticSegmentation, folder: str | os.PathLike) -> None:
    """Copy the weights of a converted backbone folder into `model.backbone`, strictly (same depth and widths)."""
    folder = Path(folder)
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise ConversionError(f"{folder}: no model.safetensors; expected a folder written by backbone conversion.")
    weights = load_file(str(weights_file))
    mapped = convert_mmseg_backbone_state_dict(weights, model.backbone, source=f"backbone folder {folder}")
    model.backbone.load_state_dict(mapped, strict=True)


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


# ----------------------------------------------------------------------------------------------------- hub, CLI


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload a converted folder to the hub (creates the repo if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message="Add Semantic FPN weights converted from mmseg"
    )
    return str(commit)


def official_table() -> str:
    """The model-zoo rows this converter knows, as a markdown table."""
    lines = ["| --model | dataset | backbone | mIoU | mIoU (ms+flip) | file |", "|---|---|---|---:|---:|---|"]
    for row in OFFICIAL_CHECKPOINTS.values():
        preset = row.preset_info
        lines.append(
            f"| {row.preset} | {preset.dataset} | R-{preset.depth} | {row.miou:.2f} | {row.miou_ms_flip:.2f} | "
            f"{row.filename} |"
        )
    for backbone in IMAGENET_BACKBONES.values():
        lines.append(f"| --backbone {backbone.name} | ImageNet | R-{backbone.depth} | | | {backbone.filename} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpn-seg-convert",
        description="Convert mmsegmentation sem_fpn checkpoints (or ImageNet ResNetV1c files) to fpn_seg folders.",
    )
    source = parser.add_argument_group("what to convert")
    source.add_argument("--model", help=f"a model-zoo checkpoint: {', '.join(OFFICIAL_CHECKPOINTS)}")
    source.add_argument("--checkpoint", help="local path or URL of a .pth (with --model: a local copy of it)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="labels and settings for --checkpoint")
    source.add_argument("--backbone", help=f"backbone mode: {', '.join(IMAGENET_BACKBONES)} (open-mmlab:// names too)")
    source.add_argument("--backbone-depth", type=int, help="backbone mode with --checkpoint: 50 or 101")
    source.add_argument("--converted", help="check an already converted folder against --verify (no conversion)")
    parser.add_argument("--output-dir", help="folder to write (refused if it exists and is not empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--verify", help="reference .npz (pixel_values, logits): compare the converted model's logits")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference --verify accepts")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the written folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument("--list", action="store_true", help="print the known checkpoints and exit")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.list:
        print(official_table())
        return
    if args.converted is not None:
        if args.verify is None:
            parser.error("--converted needs --verify REFERENCE.npz")
        comparison = verify_converted(args.converted, args.verify)
        print(comparison.summary())
        if not comparison.max_abs_diff <= args.tolerance:
            raise ConversionError(f"max abs diff {comparison.max_abs_diff:.3e} exceeds --tolerance {args.tolerance:g}")
        return
    if args.output_dir is None:
        parser.error("--output-dir is required")
    repo = args.push_to_hub
    if args.backbone is not None or args.backbone_depth is not None:
        if args.model or args.preset or args.verify:
            parser.error("backbone mode (--backbone / --backbone-depth) takes no --model, --preset or --verify")
        report = convert_imagenet_backbone(
            args.checkpoint, args.output_dir, args.backbone, args.backbone_depth, args.overwrite, repo
        )
    else:
        if args.model is None and args.checkpoint is None:
            parser.error("give --model NAME, --checkpoint PATH --preset NAME, or --backbone NAME")
        report = convert_semantic_fpn(
            args.checkpoint, args.output_dir, args.preset, args.model, args.verify, args.tolerance, args.overwrite, repo
        )
    print(report.summary())
    if repo is not None:
        print(f"pushed to https://huggingface.co/{repo}: {push_folder_to_hub(report.output_dir, repo, args.private)}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`fpn-seg-convert`); returns 0 on success, 1 when the conversion was refused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run(args, parser)
    except (ConversionError, CheckpointMismatchError) as error:
        print(f"fpn-seg-convert: refused: {error}", file=sys.stderr)
        return 1
    return 0



__all__ = [
    "IMAGENET_BACKBONES",
    "OFFICIAL_CHECKPOINTS",
    "ChecksumError",
    "ConversionError",
    "ConversionReport",
    "ImageNetBackbone",
    "LogitsComparison",
    "MMSegCheckpoint",
    "OfficialCheckpoint",
    "OutputExistsError",
    "UnsafeCheckpointError",
    "atomic_output_dir",
    "build_backbone",
    "build_semantic_fpn",
    "check_class_names",
    "check_output_dir",
    "check_sha256_prefix",
    "compare_with_reference",
    "convert_imagenet_backbone",
    "convert_semantic_fpn",
    "fetch_checkpoint",
    "file_sha256",
    "get_imagenet_backbone",
    "get_official_checkpoint",
    "infer_backbone_config",
    "infer_resnet_depth",
    "infer_semantic_fpn_config",
    "load_checkpoint",
    "load_pretrained_backbone",
    "main",
    "official_table",
    "push_folder_to_hub",
    "render_model_card",
    "semantic_fpn_from_pretrained_backbone",
    "sha256_prefix_in_name",
    "verify_converted",
]
