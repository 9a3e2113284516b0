"""The hub files (what `save_pretrained` copies next to the weights for `trust_remote_code`) import only each other
with `from .x import ...`, the standard library and what transformers itself needs; a saved folder holds exactly
them, and nothing else of the package (presets, class names, palettes, training code)."""

import ast
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fpn_seg"
ENTRY_POINTS = sorted(
    path.name for pattern in ("configuration_*.py", "modeling_*.py", "image_processing_*.py") for path in PACKAGE.glob(pattern)
)
# Libraries a hub file may import: transformers' own runtime (torch, its hard requirements) and Pillow, which
# transformers' image processors use.
ALLOWED_LIBRARIES = {"torch", "numpy", "transformers", "huggingface_hub", "safetensors", "PIL"}


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules imported as `from .x import ...`, top-level names of absolute imports) of a source file."""
    siblings, absolute = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module and "." not in node.module, (
                f"{path.name}: `from {'.' * node.level}{node.module or ''} import ...`: hub files import siblings "
                "only, as `from .x import ...`"
            )
            siblings.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
    return siblings, absolute


def hub_files() -> dict[str, set[str]]:
    """Every hub file (the entry points and the siblings they import, transitively) -> its absolute imports."""
    found, pending = {}, list(ENTRY_POINTS)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = PACKAGE / name
        assert path.is_file(), f"a hub file imports .{name[:-3]}, which is not a module file of fpn_seg"
        siblings, absolute = imports_of(path)
        found[name] = absolute
        pending += [f"{sibling}.py" for sibling in siblings]
    return found


def test_hub_files_import_only_siblings_the_standard_library_and_transformers_requirements():
    files = hub_files()
    assert set(ENTRY_POINTS) <= set(files)
    assert {"atomic.py", "model_loading.py", "opencv_exact.py", "image_reading.py", "processor_options.py"} <= set(files)
    for name, absolute in files.items():
        outside = sorted(absolute - ALLOWED_LIBRARIES - set(sys.stdlib_module_names))
        assert not outside, f"{name} imports {outside}: hub files run without fpn_seg or its other dependencies"
    assert not {"presets.py", "label_sets.py", "train.py", "inference.py"} & set(files)


def test_a_saved_folder_ships_exactly_the_hub_files(tmp_path):
    config = tiny_config()
    SemanticFPNForSemanticSegmentation(config).save_pretrained(tmp_path)
    SemanticFPNImageProcessor.from_model_config(config).save_pretrained(tmp_path)
    shipped = {path.name for path in tmp_path.glob("*.py")}
    assert shipped == set(hub_files())


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_hub_file_declares_its_public_names(name):
    tree = ast.parse((PACKAGE / name).read_text())
    assert any(isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__all__" for node in tree.body)
