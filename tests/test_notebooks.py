"""The notebooks run top to bottom (nbclient, a kernel on this interpreter) with tiny parameters, offline.

Each notebook's cell tagged `parameters` is followed by an injected cell that overrides its sizes (papermill's
convention), and the kernel runs in a temporary folder, so nothing is written next to the notebooks.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
FIXTURES = Path(__file__).parent / "fixtures"
KERNEL_NAME = "fpn-seg-test-python"
CELL_TIMEOUT_S = 300


def parameters_cell_index(notebook: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def with_parameters(notebook: nbformat.NotebookNode, parameters: dict) -> nbformat.NotebookNode:
    """A copy of `notebook` with a cell assigning `parameters` right after its `parameters` cell.

    Every overridden name must be assigned in the parameters cell (a typo would otherwise be silently ignored)."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))
    index = parameters_cell_index(notebook)
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*) =", notebook.cells[index].source, flags=re.MULTILINE))
    assert set(parameters) <= defined, f"not parameters of the notebook: {sorted(set(parameters) - defined)}"
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    injected["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, injected)
    return notebook


def kernel_manager(folder: Path) -> AsyncKernelManager:
    """A kernel on the interpreter running the tests (the venv's), whatever kernels Jupyter has installed."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fpn_seg tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def run_notebook(name: str, parameters: dict, workdir: Path) -> nbformat.NotebookNode:
    """Execute notebooks/`name` in `workdir` with `parameters`; returns the executed notebook (errors raise)."""
    notebook = with_parameters(nbformat.read(NOTEBOOKS / name, as_version=4), parameters)
    run_dir = workdir / "run"
    run_dir.mkdir()
    client = NotebookClient(
        notebook,
        km=kernel_manager(workdir),
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(run_dir)}},
    )
    # One intra-op thread: the machine's cores are shared with the rest of the suite.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    client.execute(cleanup_kc=True, env=env)
    return notebook


def text_output(notebook: nbformat.NotebookNode) -> str:
    """Everything the cells printed to stdout (and plain-text results)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def count_images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type in ("execute_result", "display_data")
    )


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        parameters_cell_index(notebook)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), path.name


def test_inference_notebook(tmp_path):
    parameters = {
        "REFERENCE_CHECKPOINT": str(FIXTURES / "fpn_r50_c19_97x130_w16_b2.pth"),
        "DEMO_MODEL_DIR": str(tmp_path / "no_demo_model"),
        "NUM_IMAGES": 2,
        "IMAGE_SIZE": (32, 64),
        "QUICK_TRAIN_IMAGES": 4,
        "QUICK_TRAIN_STEPS": 2,
    }
    executed = run_notebook("inference.ipynb", parameters, tmp_path)
    text = text_output(executed)
    work = tmp_path / "run" / "notebook_output" / "inference"

    # The conversion was verified against mmseg's logits, and the folder is complete.
    match = re.search(r"max abs diff ([0-9.e+-]+)", text)
    assert match and float(match.group(1)) <= 1e-4, text
    converted = work / "converted_reference_w16_random"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        path.name for path in converted.iterdir()
    }
    # Without a demo model a quick one was trained with the Trainer, then used by the pipeline and `segment`.
    assert "No demo model" in text and (work / "quick_model" / "model.safetensors").is_file()
    scores = dict(re.findall(r"held-out mIoU \((whole|slide|ms\+flip)\): ([0-9.]+)", text))
    assert sorted(scores) == ["ms+flip", "slide", "whole"], text
    assert all(0.0 <= float(value) <= 1.0 for value in scores.values())
    # Overlays are displayed inline: the random model's, 2 pipeline rows, and the comparison of protocols.
    assert count_images(executed) >= 4


def test_finetune_notebook(tmp_path):
    parameters = {
        "NUM_TRAIN": 4,
        "NUM_VAL": 2,
        "IMAGE_SIZE": (32, 64),
        "MAX_STEPS": 2,
        "BATCH_SIZE": 2,
        "EVAL_STEPS": 2,
    }
    executed = run_notebook("finetune.ipynb", parameters, tmp_path)
    text = text_output(executed)
    work = tmp_path / "run" / "notebook_output" / "finetune"

    # labelIds on disk, train ids after loading.
    assert (work / "data" / "gtFine" / "train").is_dir()
    assert "reloaded model gives the trained model's logits: True" in text
    model_dir = work / "model"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (model_dir / name).is_file(), name
    assert len(json.loads((model_dir / "config.json").read_text())["id2label"]) == 19
    assert (work / "training_curves.png").is_file()
    # The per-class table and the mIoU, and the reloaded model scores what the Trainer measured.
    assert "| mean" in text and "| road" in text
    trainer_miou = float(re.search(r"validation mIoU \(Trainer\): ([0-9.]+)", text).group(1))
    reloaded_miou = float(re.search(r"validation mIoU \(reloaded model, segment\): ([0-9.]+)", text).group(1))
    assert 0.0 <= trainer_miou <= 1.0
    assert reloaded_miou == pytest.approx(trainer_miou, abs=2e-4)
    assert count_images(executed) >= 3  # the example image, training curves, pipeline overlays
