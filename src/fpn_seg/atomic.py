"""Writes that appear complete or not at all: whole output folders (conversion, export, `prepare`'s Parquet `data/`),
single files (the predict CLI's PNGs) and `save_pretrained` of models and processors.

Hub code: `save_pretrained` copies it next to a model (the model and processor files import it), so it imports the
standard library only.

Whole folders are written under a temporary hidden sibling name, then swapped in with renames (atomic on one file
system). [`replace_directory`] is the swap; [`atomic_output_dir`] wraps a whole write in it; [`write_file_atomically`]
does the same for one file. What a crash (or `kill -9`) leaves, by step:

1. while writing the temporary folder `.<name>.<random>.partial`: the previous folder untouched (the partial folder
   stays behind and can be deleted; nothing loads it, as its name is not the output's);
2. between the two renames of the swap (microseconds): no folder under the output's name, and the previous
   content complete under `.<name>.<random>.previous` (rename it back to restore);
3. after the swap, while the previous content is deleted: the new folder in place; a partly deleted `.previous`.

Model and processor folders written by `save_pretrained` are made atomic file by file instead (other files of those
folders, e.g. Trainer checkpoints, must stay): see [`save_folder_atomically`].
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Weight files of an earlier model save, any variant, sharded or not: a new save retires them with its own files.
WEIGHT_FILE_NAME = re.compile(
    r"(model|pytorch_model|adapter_model|tf_model|flax_model)([.-][\w.-]+)?"
    r"\.(safetensors|bin|h5|msgpack)(\.index\.json)?"
)
# `save_pretrained` keyword arguments that go to `push_to_hub` after the save (the others go to the save itself).
PUSH_TO_HUB_OPTIONS = (
    "repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags"
)  # fmt: skip


def _ordinary_permissions(path: Path, mode: int = 0o777) -> None:
    """`mkdtemp` / `mkstemp` make private (0700 / 0600) entries; give `path` the permissions that `mkdir` (`mode`
    0o777) or `open` (0o666) would under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)` on a hidden sibling of `path`, then rename it to `path`: a crash never leaves a
    half-written file under the name (the previous file, if any, stays until the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    temporary = Path(temporary)
    try:
        write(temporary)
        _ordinary_permissions(temporary, 0o666)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _hidden_folder(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty folder `.<prefix><random><suffix>` in `parent`, with the permissions of an ordinary folder."""
    folder = Path(tempfile.mkdtemp(prefix=f".{prefix}", suffix=suffix, dir=parent))
    _ordinary_permissions(folder)
    return folder


def temporary_sibling(target: str | os.PathLike, suffix: str = ".partial") -> Path:
    """A new empty hidden folder `.<name>.<random><suffix>` next to `target` (its parents created)."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    return _hidden_folder(target.parent, f"{target.name}.", suffix)


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the folder `new` to `target`, replacing what is there, with renames only (see the module docstring).

    `new` must be on the file system of `target` (a sibling from [`temporary_sibling`]). An empty `target` folder is
    replaced in one `os.replace`; a non-empty one is first renamed to `.<name>.<random>.previous`, then deleted once
    `new` is in place.
    """
    new, target = Path(new), Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder; it was not replaced.")
    if target.is_dir() and any(target.iterdir()):
        previous = _hidden_folder(target.parent, f"{target.name}.", ".previous")
        os.replace(target, previous)  # `previous` is an empty folder: replaced by the old content
        os.replace(new, target)
        shutil.rmtree(previous)
    else:
        os.replace(new, target)  # also replaces an empty folder


def check_output_dir(
    output_dir: str | os.PathLike, overwrite: bool, refuse: Callable[[str], Exception] = FileExistsError
) -> None:
    """Refuse (raise `refuse(message)`) an existing non-empty `output_dir` unless `overwrite`, anything that is not a
    folder, and a mount point."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise refuse(f"--output-dir {output_dir}: exists and is not a folder.")
    if os.path.ismount(output_dir):
        raise refuse(
            f"--output-dir {output_dir}: is a mount point, which cannot be replaced by a rename (the output is written "
            f"aside and swapped in whole); give a folder inside it, e.g. {output_dir / 'model'}."
        )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise refuse(
            f"--output-dir {output_dir}: the folder exists and is not empty; pass --overwrite (overwrite=True) to "
            "replace it, or choose another folder."
        )


@contextmanager
def atomic_output_dir(
    output_dir: str | os.PathLike, overwrite: bool = False, refuse: Callable[[str], Exception] = FileExistsError
) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `output_dir` ([`replace_directory`]),
    on any error it is removed (with the parent folders this call created), so a failed write leaves nothing.

    An existing non-empty `output_dir` is refused (`refuse(message)`, checked before and after the write) unless
    `overwrite`.
    """
    output_dir = Path(output_dir).absolute()
    check_output_dir(output_dir, overwrite, refuse)
    created = [parent for parent in reversed(output_dir.parents) if not parent.exists()]
    staging = temporary_sibling(output_dir)
    try:
        yield staging
        check_output_dir(output_dir, overwrite, refuse)
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise


# ------------------------------------------------------------------------------------------------ save_pretrained


def split_push_options(
    kwargs: dict[str, Any], save_directory: str | os.PathLike
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`save_pretrained`'s keyword arguments -> (those of the save itself, those of the `push_to_hub` after it); the
    push's `repo_id` defaults to the name of `save_directory`, as in transformers."""
    push = {name: kwargs[name] for name in PUSH_TO_HUB_OPTIONS if name in kwargs}
    push.setdefault("repo_id", Path(save_directory).absolute().name)
    return {name: value for name, value in kwargs.items() if name not in push}, push


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
    3. The new files move in (each `os.replace` is atomic on one file system), `commit_file` last, with the
       permissions of files `open` creates (writers that stage through `mkstemp` leave 0600).
    4. The hidden folders are removed.

    Other files of the folder (a processor's or a model's files, README.md, Trainer checkpoints...) are left alone.
    Returns what `save` returned.
    """
    target = Path(save_directory).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_pretrained: {target} is a file; expected a folder (created when missing).")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staging = _hidden_folder(target, "saving-")
    try:
        result = save(str(staging))
        new_names = sorted(path.name for path in staging.iterdir())
        if commit_file not in new_names:
            raise RuntimeError(f"save_pretrained wrote no {commit_file} (wrote {new_names}); nothing was replaced.")
        for name in new_names:
            if (staging / name).is_file():
                _ordinary_permissions(staging / name, 0o666)
        _move_in(staging, target, new_names, commit_file, retire)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(target.iterdir()):
            target.rmdir()  # a failed first save leaves no folder
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return result


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
    previous = _hidden_folder(target, "previous-") if replaced else None
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


__all__ = [
    "PUSH_TO_HUB_OPTIONS",
    "WEIGHT_FILE_NAME",
    "atomic_output_dir",
    "check_output_dir",
    "replace_directory",
    "save_folder_atomically",
    "split_push_options",
    "temporary_sibling",
    "write_file_atomically",
]
