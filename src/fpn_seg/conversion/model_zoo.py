"""The files this converter knows (mmseg's sem_fpn model zoo, the ImageNet ResNetV1c initialisations), the
conversion's errors, and fetching a file with its sha256 check: downloads into the torch hub cache, local copies as
they are.
"""

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..presets import SemanticFPNPreset, get_preset

_MMSEG_ZOO = "https://download.openmmlab.com/mmsegmentation/v0.5/sem_fpn"
MMSEG_CONFIGS_URL = "https://github.com/open-mmlab/mmsegmentation/blob/main/configs/sem_fpn"
# `<anything>-<8 to 64 hex digits>.pth`: the model-zoo file name convention (as `torch.hub`'s `check_hash`).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


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
    raise ConversionArgumentError(f"--model {name!r} is not one of the sem_fpn model-zoo checkpoints: {known}.")


def get_imagenet_backbone(name: str) -> ImageNetBackbone:
    """`resnet50_v1c` / `resnet101_v1c`, also written `open-mmlab://resnet50_v1c` as in mmseg configs."""
    key = name.removeprefix("open-mmlab://")
    if key not in IMAGENET_BACKBONES:
        raise ConversionArgumentError(
            f"--backbone {name!r} is not known; expected one of {', '.join(IMAGENET_BACKBONES)}."
        )
    return IMAGENET_BACKBONES[key]


class ConversionError(ValueError):
    """The conversion was refused; the message says which input is wrong and what was expected."""


class ConversionArgumentError(ConversionError):
    """The arguments cannot be used as given (an unknown name, a missing file, options that clash), found before any
    file is read: a usage error of `fpn-seg convert`."""


class UnsafeCheckpointError(ConversionError):
    """The file cannot be read with `torch.load(weights_only=True)` (it needs arbitrary unpickling)."""


class ChecksumError(ConversionError):
    """The file's sha256 does not start with the prefix that its name (or the model zoo) promises."""


class OutputExistsError(ConversionArgumentError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


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
            raise ConversionArgumentError(f"--checkpoint {str(path_or_url)!r}: no such file.")
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


def fetch_verified(path_or_url: str | os.PathLike, known: "_DownloadableFile | None" = None) -> tuple[Path, str, str | None]:
    """Fetch a checkpoint (a local path or URL; `known`'s URL when `path_or_url` is None) and check its sha256 against
    `known`'s prefix, or the prefix in its file name: `(local path, sha256, the prefix checked or None)`."""
    path = fetch_checkpoint(path_or_url if path_or_url is not None else known.url)
    expected_prefix = known.sha256_prefix if known is not None else sha256_prefix_in_name(path.name)
    return path, check_sha256_prefix(path, expected_prefix), expected_prefix


__all__ = [
    "IMAGENET_BACKBONES",
    "OFFICIAL_CHECKPOINTS",
    "ChecksumError",
    "ConversionArgumentError",
    "ConversionError",
    "ImageNetBackbone",
    "OfficialCheckpoint",
    "OutputExistsError",
    "UnsafeCheckpointError",
    "check_sha256_prefix",
    "fetch_checkpoint",
    "fetch_verified",
    "file_sha256",
    "get_imagenet_backbone",
    "get_official_checkpoint",
    "sha256_prefix_in_name",
]
