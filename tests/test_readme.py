"""Every README code block marked `<!-- readme-test -->` runs, in order, each in a fresh process (as a user pastes it),
against a small `demo_output/`."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.data import generate_street_scenes
from fpn_seg.presets import preset_config

REPO = Path(__file__).resolve().parents[1]
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\s*```(python|bash)\n(.*?)```", re.DOTALL)


def readme_blocks() -> list[tuple[str, str]]:
    return MARKED_BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))


def make_demo_output(root: Path) -> None:
    """What `make demo` leaves, in miniature: the synthetic dataset, a (untrained) model folder, an image."""
    data = generate_street_scenes(root / "data", num_train=4, num_val=2, size=(32, 64), seed=0)
    cityscapes = preset_config("fpn_r50_512x1024_80k_cityscapes")
    config = tiny_config(num_labels=19)
    config.id2label, config.label2id = cityscapes.id2label, cityscapes.label2id
    SemanticFPNForSemanticSegmentation(config).save_pretrained(root / "model")
    SemanticFPNImageProcessor.from_model_config(config, scale=(128, 64)).save_pretrained(root / "model")
    first_image = sorted((data / "leftImg8bit" / "val").rglob("*.png"))[0]
    shutil.copy(first_image, root / "street.png")


def test_readme_has_tested_blocks():
    kinds = [kind for kind, _ in readme_blocks()]
    assert kinds.count("python") >= 4 and kinds.count("bash") >= 1


def test_readme_blocks_run(tmp_path, monkeypatch):
    make_demo_output(tmp_path / "demo_output")
    (tmp_path / "tests").symlink_to(REPO / "tests")  # the README's commands use tests/fixtures
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for index, (kind, code) in enumerate(readme_blocks()):
        # Each block in a fresh process, as a user pastes it: it must import and load all it uses.
        if kind == "python":
            command = [sys.executable, "-c", code]
        else:
            command = ["bash", "-euo", "pipefail", "-c", code]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"README block {index} failed:\n{code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    assert (tmp_path / "demo_output" / "predictions").is_dir()
    assert (tmp_path / "converted" / "reference_r50" / "model.safetensors").is_file()
