"""Shared test helpers: reference fixtures and tiny model configs."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fpn_seg import ResNetV1cConfig, SemanticFPNConfig, SemanticFPNForSemanticSegmentation
from fpn_seg.conversion import convert_mmseg_state_dict

# `--runtime auto` caches its choices: tests (and the processes they start) keep theirs out of ~/.cache.
os.environ.setdefault("FPN_SEG_CACHE_DIR", tempfile.mkdtemp(prefix="fpn_seg_test_cache_"))

FIXTURES = Path(__file__).parent / "fixtures"

# The reference files made with the real mmsegmentation 1.2.2 (see tests/fixtures/README.md).
REFERENCE_MODELS = {
    "fpn_r50_c19_97x130_w16_b2": {"depth": 50, "num_labels": 19},
    "fpn_r101_c19_97x130_w16_b2": {"depth": 101, "num_labels": 19},
    "fpn_r50_c150_64x96_w16": {"depth": 50, "num_labels": 150},
}


def reference_config(name: str) -> SemanticFPNConfig:
    """The narrowed (`_w16`) architecture of a reference fixture: base width 16, neck 32, head 16."""
    spec = REFERENCE_MODELS[name]
    return SemanticFPNConfig(
        backbone_config=ResNetV1cConfig(depth=spec["depth"], stem_channels=16, base_channels=16),
        neck_channels=32,
        head_channels=16,
        id2label={i: f"class_{i}" for i in range(spec["num_labels"])},
    )


def load_reference(name: str) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays of the `.npz`, the `.pth` checkpoint dict) of a reference fixture."""
    arrays = dict(np.load(FIXTURES / f"{name}.npz"))
    checkpoint = torch.load(FIXTURES / f"{name}.pth", map_location="cpu", weights_only=True)
    return arrays, checkpoint


def randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding is not a no-op."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model


def reference_model(name: str) -> tuple[SemanticFPNForSemanticSegmentation, dict]:
    arrays, checkpoint = load_reference(name)
    model = SemanticFPNForSemanticSegmentation(reference_config(name)).eval()
    model.load_state_dict(convert_mmseg_state_dict(checkpoint["state_dict"], model), strict=True)
    return model, arrays


def tiny_config(num_labels: int = 4, depth: int = 18, **kwargs) -> SemanticFPNConfig:
    """A model small enough for CPU unit tests (a few thousand parameters)."""
    return SemanticFPNConfig(
        backbone_config=ResNetV1cConfig(depth=depth, stem_channels=8, base_channels=8),
        neck_channels=16,
        head_channels=8,
        id2label={i: f"class_{i}" for i in range(num_labels)},
        **kwargs,
    )


def run_without_fpn_seg(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `fpn_seg` is not importable (as on a machine without the package),
    offline, with its own transformers modules cache. The code should assert and print what it checked."""
    script = Path(cwd) / "_without_fpn_seg.py"
    script.write_text(
        "import os, sys\n"
        "sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or '.', 'fpn_seg'))]\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('fpn_seg') is None, 'fpn_seg must not be importable here'\n" + code
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(Path(cwd) / "hf_modules"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-I", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
