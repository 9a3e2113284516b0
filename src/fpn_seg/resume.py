"""Which Trainer checkpoint a run resumes from: only a whole one.

The `Trainer` writes `checkpoint-<step>` in place, file by file (weights, optimizer, scheduler, RNG states, then
`trainer_state.json`). A run killed while saving leaves a torn folder: a file missing, empty or cut short. Whether a
checkpoint is whole is judged by content, not by the presence of a marker file ([`checkpoint_problems`]):

- `trainer_state.json` parses, and is a JSON object with a `global_step`;
- `config.json` parses;
- the weights (`model.safetensors`, or the shards an `model.safetensors.index.json` names) have a valid safetensors
  header and exactly the bytes it describes;
- `optimizer.pt` and `scheduler.pt` are there (unless the run saved only the model: `save_only_model`), and every
  torch state file (`optimizer.pt`, `scheduler.pt`, `scaler.pt`, `rng_state*.pth`) is a whole zip archive (torch's
  format: its directory is at the end of the file, so a file cut short has none).

`--resume_from_checkpoint last` skips torn checkpoints with a warning naming each and what is wrong with it, and takes
the newest whole one; a torn checkpoint named explicitly is refused with the file and the remedy. Nothing is deleted.
"""

import json
import os
import re
import struct
import zipfile
from pathlib import Path

from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, logging

from .trainer import TRAINING_ARGS_JSON

logger = logging.get_logger(__name__)

# Values of --resume_from_checkpoint that mean "the newest whole checkpoint in --output_dir".
RESUME_FROM_LATEST = ("last", "latest", "true")
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


class TornCheckpointError(ValueError):
    """A checkpoint folder named by `--resume_from_checkpoint` is not whole (see [`checkpoint_problems`])."""


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a `checkpoint-<step>` folder, -1 for any other name."""
    match = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else -1


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return f"{path.name} is empty"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return f"{path.name} is not valid JSON ({error.msg} at line {error.lineno}, cut short?)"
    if not isinstance(value, dict):
        return f"{path.name} is not a JSON object"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensor bytes the header's offsets end at."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    with path.open("rb") as file:
        start = file.read(8)
        if len(start) < 8:
            return f"{path.name} is empty or cut short ({size} bytes)"
        (header_size,) = struct.unpack("<Q", start)
        if 8 + header_size > size:
            return f"{path.name} is cut short ({size} bytes, its header alone needs {8 + header_size})"
        try:
            header = json.loads(file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has an unreadable header"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return f"{path.name} is cut short ({size} of {expected} bytes)" if size < expected else (
            f"{path.name} has {size - expected} bytes more than its header describes"
        )
    return None


def _weights_problems(folder: Path) -> list[str]:
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        problem = _json_problem(index)
        if problem:
            return [problem]
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [problem for shard in shards if (problem := _safetensors_problem(folder / shard))]
    problem = _safetensors_problem(folder / SAFE_WEIGHTS_NAME)
    return [problem] if problem else []


def _torch_file_problem(path: Path) -> str | None:
    """torch.save's format is a zip archive, whose central directory is the last thing written."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return f"{path.name} is empty or cut short ({path.stat().st_size} bytes, not a whole torch file)"
    return None


def _saves_only_model(folder: Path) -> bool:
    """Whether the run that wrote `folder` saved only the model (`save_only_model`: no optimizer or scheduler)."""
    try:
        return bool(json.loads((folder / TRAINING_ARGS_JSON).read_text()).get("save_only_model", False))
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """What keeps the Trainer checkpoint `folder` from being resumed, one phrase per file (`[]`: it is whole).

    Reads only headers and directories, never the tensors: fast enough to run over every checkpoint of a run."""
    folder = Path(folder)
    problems = []
    state_problem = _json_problem(folder / TRAINER_STATE_NAME)
    if state_problem is None and "global_step" not in json.loads((folder / TRAINER_STATE_NAME).read_text()):
        state_problem = f"{TRAINER_STATE_NAME} has no global_step"
    problems += [state_problem] if state_problem else []
    problems += [problem for problem in [_json_problem(folder / CONFIG_NAME)] if problem]
    problems += _weights_problems(folder)
    names = set() if _saves_only_model(folder) else {OPTIMIZER_NAME, SCHEDULER_NAME}
    names |= {path.name for pattern in ("*.pt", "rng_state*.pth") for path in folder.glob(pattern)}
    problems += [problem for name in sorted(names) if (problem := _torch_file_problem(folder / name))]
    return problems


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names, checked whole: `None` (or "", "false", "none") for a
    fresh run, `last` (or "latest", "true") for the newest whole `checkpoint-<step>` in `output_dir` (torn ones are
    skipped with a warning), or a folder path (a torn one raises [`TornCheckpointError`])."""
    if value is None or value.strip().lower() in ("", "false", "none"):
        return None
    if value.strip().lower() in RESUME_FROM_LATEST:
        return str(_newest_whole_checkpoint(value, Path(output_dir)))
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    problems = checkpoint_problems(path)
    if problems:
        raise TornCheckpointError(
            f"--resume_from_checkpoint {value}: not a whole Trainer checkpoint ({'; '.join(problems)}; the run was "
            "probably stopped while saving it). Resume from an earlier checkpoint-<step> folder, or pass `last` for "
            "the newest whole one."
        )
    return str(path)


def _newest_whole_checkpoint(value: str, output_dir: Path) -> Path:
    folders = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0),
                     key=checkpoint_step, reverse=True)  # fmt: skip
    torn = []
    for folder in folders:
        problems = checkpoint_problems(folder)
        if not problems:
            if torn:
                logger.warning(
                    f"--resume_from_checkpoint {value}: skipping torn checkpoint(s) "
                    f"{'; '.join(torn)}; resuming from {folder.name}. The torn folders are kept."
                )
            return folder
        torn.append(f"{folder.name} ({', '.join(problems)})")
    found = f" (torn: {'; '.join(torn)})" if torn else ""
    raise FileNotFoundError(
        f"--resume_from_checkpoint {value}: no whole checkpoint-<step> folder in {output_dir}{found}; start without "
        "--resume_from_checkpoint, or name a checkpoint folder."
    )


__all__ = ["RESUME_FROM_LATEST", "TornCheckpointError", "checkpoint_problems", "checkpoint_step", "resolve_checkpoint"]
