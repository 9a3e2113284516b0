"""A crash while writing a model folder or a prepared dataset leaves the previous content (or nothing), never a
half-written folder that loads.

The kills are real: a subprocess is stopped with SIGKILL at a known point (its writer is made to wait on disk after a
torn write, or it kills itself between two renames), and the folder is then compared byte for byte with what it held
before, and loaded.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import transformers.modeling_utils as modeling_utils
from conftest import tiny_config
from transformers import AutoModelForSemanticSegmentation

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.atomic import replace_directory, temporary_sibling
from fpn_seg.data import load_prepared, prepare_ade20k

TESTS = Path(__file__).parent
MODEL_FILES = {"config.json", "model.safetensors"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes), except in hidden folders (the atomic writes' own)."""
    files = {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()}
    shown = sorted(file for file in files if not file.parts[0].startswith("."))
    return {file.as_posix(): (folder / file).read_bytes() for file in shown}


def hidden(parent: Path, name: str) -> list[Path]:
    """The hidden siblings `.<name>.*` of folder `name` (whole-folder writes: `prepare`)."""
    return sorted(path for path in parent.iterdir() if path.name.startswith(f".{name}."))


def hidden_inside(folder: Path) -> list[Path]:
    """The hidden staging folders of `save_pretrained` inside a model folder (`.saving-*`, `.previous-*`)."""
    return sorted(path for path in folder.iterdir() if path.name.startswith((".saving-", ".previous-")))


def weights_equal(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    theirs = other.state_dict()
    return all(torch.equal(tensor, theirs[key]) for key, tensor in model.state_dict().items())


@pytest.fixture
def previous_save(tmp_path) -> tuple[Path, SemanticFPNForSemanticSegmentation]:
    """A model folder as a training run leaves it: model + processor, a README and a checkpoint folder."""
    torch.manual_seed(0)
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(64, 32)).save_pretrained(folder)
    (folder / "README.md").write_text("# my model\n")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    return folder, model


def run_until(script: str, *arguments, signal_file: Path | None = None, timeout: float = 240) -> int:
    """Run `script` in a fresh interpreter (one thread, offline); SIGKILL it once `signal_file` exists (if given).
    Returns its exit status (-9 when killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    header = f"import sys, torch\ntorch.set_num_threads(1)\nsys.path.insert(0, {str(TESTS)!r})\n"
    code = header + textwrap.dedent(script)
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, arguments)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while signal_file is not None and not signal_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the writer never reached the kill point: {process.communicate()[1].decode()[-3000:]}")
        time.sleep(0.05)
    if signal_file is not None:
        process.send_signal(signal.SIGKILL)
    try:
        return process.wait(timeout=timeout)
    finally:
        process.kill()


# ------------------------------------------------------------------------------------------------ save_pretrained


TORN_SAVE = """
    import time
    from pathlib import Path
    import transformers.modeling_utils as modeling_utils
    from conftest import tiny_config
    from fpn_seg import SemanticFPNForSemanticSegmentation

    folder, signal_file = Path(sys.argv[1]), Path(sys.argv[2])
    write = modeling_utils.safe_save_file

    def torn_write(tensors, filename, metadata=None):
        write(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # half the weights on disk, as a torn write leaves them
        signal_file.write_text(str(filename))
        time.sleep(600)  # killed here

    modeling_utils.safe_save_file = torn_write
    torch.manual_seed(1)
    SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(folder)
"""


def test_save_pretrained_killed_mid_write_leaves_the_previous_model(previous_save, tmp_path):
    folder, previous = previous_save
    before = snapshot(folder)
    signal_file = tmp_path / "weights_half_written"
    assert run_until(TORN_SAVE, folder, signal_file, signal_file=signal_file) == -signal.SIGKILL

    assert snapshot(folder) == before  # same files, same bytes
    assert weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), previous)
    # The torn write happened in the hidden staging folder, which stays behind and does not load.
    torn = Path(signal_file.read_text())
    (staging,) = hidden_inside(folder)
    assert torn.parent == staging and staging.name.startswith(".saving-")
    with pytest.raises(OSError, match="truncated or corrupt"):
        SemanticFPNForSemanticSegmentation.from_pretrained(staging)
    # The next save works beside it.
    SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(folder)
    assert not weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), previous)


KILLED_WHILE_MOVING_IN = """
    import os, signal
    from pathlib import Path
    from conftest import tiny_config
    from fpn_seg import SemanticFPNForSemanticSegmentation

    real_replace = os.replace

    def replace_or_die(source, target):
        if ".saving-" in str(source):  # the previous files are all retired: die before the first new one moves in
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(source, target)

    os.replace = replace_or_die
    torch.manual_seed(1)
    SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(Path(sys.argv[1]))
"""


def test_save_pretrained_killed_while_moving_in_leaves_no_loadable_mix(previous_save):
    """The documented window: no config.json in the folder (it does not load), the previous save complete in
    `.model.previous-*`; moving its files back restores the previous model."""
    folder, previous = previous_save
    before = snapshot(folder)
    assert run_until(KILLED_WHILE_MOVING_IN, folder) == -signal.SIGKILL

    left = snapshot(folder)
    assert not MODEL_FILES & set(left)
    # The processor's own save: its config and code (with the siblings only it imports).
    processor_files = {"preprocessor_config.json", "image_processing_semantic_fpn.py", "opencv_exact.py",
                       "image_reading.py", "processor_options.py"}  # fmt: skip
    assert set(left) == processor_files | {"README.md", "checkpoint-2/trainer_state.json"}
    with pytest.raises(ValueError, match="Unrecognized model"):
        AutoModelForSemanticSegmentation.from_pretrained(folder)
    (retired,) = [path for path in hidden_inside(folder) if path.name.startswith(".previous-")]
    assert {**left, **snapshot(retired)} == before  # every previous byte is still on disk
    for path in retired.iterdir():
        path.rename(folder / path.name)
    assert weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), previous)


def test_an_error_while_moving_in_puts_the_previous_save_back(previous_save, monkeypatch):
    """An exception (not a kill) half-way through the renames: the previous files return, no hidden folder stays."""
    folder, previous = previous_save
    before = snapshot(folder)
    real_replace, moved_in = os.replace, []

    def fail_on_second_new_file(source, destination):
        if ".saving-" in str(source):
            moved_in.append(source)
            if len(moved_in) == 2:
                raise OSError(5, "Input/output error")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", fail_on_second_new_file)
    with pytest.raises(OSError, match="Input/output error"):
        SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4)).save_pretrained(folder)
    monkeypatch.undo()
    assert snapshot(folder) == before and not hidden_inside(folder)
    assert weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), previous)


def test_a_failed_save_leaves_the_previous_save_or_nothing(previous_save, tmp_path, monkeypatch):
    folder, previous = previous_save
    before = snapshot(folder)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    model = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4))
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(folder)
    assert snapshot(folder) == before and not hidden_inside(folder)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists() and not hidden(tmp_path, "new")


def test_a_failed_processor_save_keeps_the_previous_processor(previous_save, monkeypatch):
    folder, _ = previous_save
    before = snapshot(folder)

    def torn_json(self, path):
        Path(path).write_text('{"scale": [20')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SemanticFPNImageProcessor, "to_json_file", torn_json)
    with pytest.raises(OSError, match="No space left"):
        SemanticFPNImageProcessor(scale=(20, 10)).save_pretrained(folder)
    assert snapshot(folder) == before and not hidden_inside(folder)


def test_resaving_keeps_other_files_and_retires_old_weight_files(previous_save):
    """A sharded save over a single file, then a single file over shards: the folder always holds one model (old
    weight files never linger to be picked up), and the processor, README and checkpoints stay."""
    folder, previous = previous_save
    torch.manual_seed(2)
    sharded = SemanticFPNForSemanticSegmentation(tiny_config(num_labels=4))
    sharded.save_pretrained(folder, max_shard_size="300KB")
    names = {path.name for path in folder.iterdir()}
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert {"preprocessor_config.json", "README.md", "checkpoint-2"} <= names
    assert weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), sharded)

    previous.save_pretrained(folder)
    names = {path.name for path in folder.iterdir()}
    assert not [name for name in names if name.startswith("model-") or name.endswith(".index.json")]
    assert {"model.safetensors", "preprocessor_config.json", "README.md", "checkpoint-2"} <= names
    assert weights_equal(AutoModelForSemanticSegmentation.from_pretrained(folder), previous)
    assert not hidden_inside(folder)


def test_push_to_hub_gets_the_saved_model_and_the_options(tmp_path):
    """`save_pretrained(push_to_hub=True)` saves atomically, then pushes with the hub options (offline: the push
    itself is replaced by a recorder)."""
    model = SemanticFPNForSemanticSegmentation(tiny_config())
    pushed = []
    model.push_to_hub = lambda repo_id, **options: pushed.append((repo_id, options, snapshot(tmp_path / "fpn-tiny")))
    model.save_pretrained(tmp_path / "fpn-tiny", push_to_hub=True, commit_message="first", private=True)
    ((repo_id, options, files),) = pushed
    assert repo_id == "fpn-tiny" and options == {"max_shard_size": "50GB", "commit_message": "first", "private": True}
    assert MODEL_FILES <= set(files)  # saved before the push


# ------------------------------------------------------------------------------------------------ prepare


def write_ade20k(root: Path, seed: int, count: int = 4) -> Path:
    rng = np.random.default_rng(seed)
    for index in range(1, count + 1):
        for kind, data, suffix in (
            ("images", rng.integers(0, 256, (6, 9, 3), np.uint8), "jpg"),
            ("annotations", rng.integers(0, 151, (6, 9)).astype(np.uint8), "png"),
        ):
            folder = root / "ADEChallengeData2016" / kind / "training"
            folder.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(data).save(folder / f"ADE_train_{index:08d}.{suffix}")
    return root


SLOW_PREPARE = """
    import time
    from pathlib import Path
    import pyarrow.parquet as pq
    from fpn_seg.data import prepare_ade20k

    source, output, signal_file = (Path(argument) for argument in sys.argv[1:4])
    write_table = pq.ParquetWriter.write_table

    def write_then_wait(self, table, *args, **kwargs):
        write_table(self, table, *args, **kwargs)
        signal_file.write_text("one row group written")
        time.sleep(600)  # killed here

    pq.ParquetWriter.write_table = write_then_wait
    prepare_ade20k(source, output, splits=["train"], rows_per_group=1, overwrite=True, progress=False)
"""


def test_prepare_killed_mid_write_leaves_the_previous_dataset(tmp_path):
    output = tmp_path / "prepared"
    prepare_ade20k(write_ade20k(tmp_path / "old", seed=0), output, splits=["train"], progress=False)
    before, rows = snapshot(output), load_prepared(output)["train"].to_dict()
    signal_file = tmp_path / "row_group_written"
    new_source = write_ade20k(tmp_path / "new", seed=1)
    assert run_until(SLOW_PREPARE, new_source, output, signal_file, signal_file=signal_file) == -signal.SIGKILL

    assert snapshot(output) == before
    assert load_prepared(output)["train"].to_dict() == rows
    (partial,) = hidden(output, "data")  # the unfinished write, under a hidden name that no loader reads
    assert partial.name.endswith(".partial") and list(partial.glob("*.parquet"))


def test_the_swap_window_keeps_the_previous_folder_under_a_recognisable_name(tmp_path, monkeypatch):
    """`replace_directory` stopped between its two renames: no folder under the name, the previous content complete
    in `.<name>.<random>.previous`."""
    target = tmp_path / "data"
    target.mkdir()
    (target / "train-00000-of-00001.parquet").write_bytes(b"PAR1 previous")
    new = temporary_sibling(target)
    (new / "train-00000-of-00001.parquet").write_bytes(b"PAR1 new")
    real_replace, calls = os.replace, []

    def crash_on_second_rename(source, destination):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped between the renames")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(new, target)
    monkeypatch.undo()
    assert not target.exists()
    (previous,) = [path for path in hidden(tmp_path, "data") if path.name.endswith(".previous")]
    assert snapshot(previous) == {"train-00000-of-00001.parquet": b"PAR1 previous"}
    shutil.rmtree(previous)


def test_a_mount_point_is_refused_as_a_whole_folder_output():
    """A mount point cannot be replaced by a rename (EBUSY): refused up front with the way out named. (Saving a model
    into one works: `save_pretrained` stages inside the folder.)"""
    from fpn_seg.atomic import check_output_dir

    with pytest.raises(FileExistsError, match=r"is a mount point.*give a folder inside it"):
        check_output_dir(Path("/"), overwrite=True)
