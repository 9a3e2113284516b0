"""Files around the model a user may get wrong (recipes, output folders), and what fpn_seg writes and reads.

- Recipe files: unknown keys, wrong structure, broken syntax are refused naming the file.
- Output folders: an existing output is not replaced without a flag; a file where a folder is expected is refused.
- File formats: what we write is safetensors / JSON / code (plus PNG and Parquet data); the package never unpickles
  anything except through `torch.load(weights_only=True)` (an audit of the source).
"""

import ast
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config

import fpn_seg
from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.atomic import atomic_output_dir
from fpn_seg.train import read_recipe

PACKAGE = Path(fpn_seg.__file__).parent


def written(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# (write the recipe, error class, message fragment: a regex)
BAD_RECIPES = {
    "unknown-key": (
        lambda folder: written(folder / "typo.yaml", "preset: fpn_r50_512x1024_80k_cityscapes\nlearning_rte: 0.01\n"),
        ValueError, r"Recipe .*typo\.yaml has unknown keys: learning_rte\. Keys must be fields of ModelArguments",
    ),
    "not-a-mapping": (
        lambda folder: written(folder / "list.yaml", "- learning_rate: 0.01\n"), ValueError,
        r"Recipe .*list\.yaml must hold a mapping of argument names to values, got list",
    ),
    "broken-yaml": (
        lambda folder: written(folder / "broken.yaml", "learning_rate: [0.01\n"), ValueError,
        r"Recipe .*broken\.yaml is not valid YAML",
    ),
    "broken-json": (
        lambda folder: written(folder / "broken.json", '{"learning_rate": 0.01,}'), ValueError,
        r"Recipe .*broken\.json is not valid JSON",
    ),
    "recipe-inside-a-recipe": (
        lambda folder: written(folder / "nested.yaml", "recipe: other.yaml\n"), ValueError,
        r"nested\.yaml: the key 'recipe' cannot be set inside a recipe",
    ),
    "no-such-recipe": (
        lambda folder: str(folder / "missing.yaml"), FileNotFoundError,
        r"missing\.yaml' is neither a file nor a built-in recipe \(.*fpn_r50_512x1024_80k_cityscapes",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipes_are_refused_naming_the_file(case, tmp_path):
    write, error, message = BAD_RECIPES[case]
    with pytest.raises(error, match=re.compile(message, re.S)):
        read_recipe(write(tmp_path))


# ------------------------------------------------------------------------------------------------ output folders


def existing_output(tmp_path: Path) -> Path:
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def write_into(output_dir: Path, overwrite: bool = False) -> None:
    with atomic_output_dir(output_dir, overwrite) as staging:
        (staging / "config.json").write_text('{"new": true}')


# (make the path, call on it, error class, message fragment: a regex)
BAD_OUTPUTS = {
    "output-folder-holds-a-model": (
        existing_output, write_into, FileExistsError,
        r"--output-dir .*converted: the folder exists and is not empty; pass --overwrite \(overwrite=True\)",
    ),
    "output-folder-is-a-file": (
        lambda tmp_path: Path(written(tmp_path / "out", "notes")), write_into, FileExistsError,
        r"--output-dir .*out: exists and is not a folder",
    ),
    "model-saved-onto-a-file": (
        lambda tmp_path: Path(written(tmp_path / "model", "notes")),
        lambda path: SemanticFPNForSemanticSegmentation(tiny_config()).save_pretrained(path), NotADirectoryError,
        r"save_pretrained: .*model is a file; expected a folder",
    ),
    "processor-saved-onto-a-file": (
        lambda tmp_path: Path(written(tmp_path / "model", "notes")),
        lambda path: SemanticFPNImageProcessor().save_pretrained(path), NotADirectoryError,
        r"save_pretrained: .*model is a file; expected a folder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_outputs_are_not_replaced_without_a_flag(case, tmp_path):
    make, call, error, message = BAD_OUTPUTS[case]
    path = make(tmp_path)
    before = {item.name: item.read_bytes() for item in (path.iterdir() if path.is_dir() else [path])}
    with pytest.raises(error, match=re.compile(message, re.S)):
        call(path)
    assert {item.name: item.read_bytes() for item in (path.iterdir() if path.is_dir() else [path])} == before
    assert sorted(item.name for item in tmp_path.iterdir()) == [path.name]  # no temporary folder left either


def test_overwrite_flag_replaces_the_output(tmp_path):
    folder = existing_output(tmp_path)
    write_into(folder, overwrite=True)
    assert (folder / "config.json").read_text() == '{"new": true}'
    assert sorted(item.name for item in tmp_path.iterdir()) == ["converted"]


# ------------------------------------------------------------------------------------------------ file formats


def test_saved_folders_hold_only_safetensors_json_and_code(tmp_path):
    model = SemanticFPNForSemanticSegmentation(tiny_config())
    model.save_pretrained(tmp_path / "model")
    SemanticFPNImageProcessor.from_model_config(model.config).save_pretrained(tmp_path / "model")
    suffixes = {path.suffix for path in (tmp_path / "model").iterdir()}
    assert suffixes == {".safetensors", ".json", ".py"}
    assert not list(tmp_path.glob(".*"))  # the atomic save leaves no temporary folder


def test_the_package_never_unpickles(tmp_path):
    """Audit of `src/fpn_seg`: every `torch.load` passes `weights_only=True`; no `pickle.load(s)`, `torch.save`,
    `numpy.load(allow_pickle=True)` or `yaml.load` (only `yaml.safe_load`) anywhere."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)[:80]}"
            if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(where)
            if name in ("pickle.load", "pickle.loads", "torch.save", "yaml.load", "yaml.unsafe_load"):
                problems.append(where)
            if name.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle", "False") != "False":
                problems.append(where)
    assert not problems, "\n".join(problems)
    assert "torch.load(path, map_location=\"cpu\", weights_only=True)" in (PACKAGE / "conversion" / "checkpoints.py").read_text()


def test_label_pngs_and_parquet_are_data_only(tmp_path):
    """`prepare` writes Parquet files and a JSON summary; predictions are PNGs (checked by their signatures)."""
    from fpn_seg.data import prepare_ade20k
    from fpn_seg.visualize import save_label_png

    annotations = tmp_path / "ade/ADEChallengeData2016/annotations/training"
    images = tmp_path / "ade/ADEChallengeData2016/images/training"
    annotations.mkdir(parents=True)
    images.mkdir(parents=True)
    PIL.Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(images / "ADE_train_00000001.jpg")
    PIL.Image.fromarray(np.ones((6, 7), np.uint8)).save(annotations / "ADE_train_00000001.png")
    prepare_ade20k(tmp_path / "ade", tmp_path / "out", splits=["train"], progress=False)
    files = sorted(path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*"))
    assert files == ["data", "data/train-00000-of-00001.parquet", "summary.json"]
    assert (tmp_path / "out/data/train-00000-of-00001.parquet").read_bytes()[:4] == b"PAR1"
    save_label_png(torch.zeros(3, 4, dtype=torch.long), tmp_path / "label.png")
    assert (tmp_path / "label.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
