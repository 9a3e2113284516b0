"""Whole-folder outputs that appear complete or not at all: conversion folders and `prepare`'s Parquet `data/`.

The output is written under a temporary hidden sibling name, then swapped in with renames (atomic on one file
system). [`replace_directory`] is the swap; [`atomic_output_dir`] wraps a whole write in it; [`write_file_atomically`]
does the same for one file (the predict CLI's PNGs).

What a crash (or `kill -9`) leaves, by step:

1. while writing the temporary folder `.<name>.<random>.partial`: the previous folder untouched (the partial folder
   stays behind and can be deleted; nothing loads it, as its name is not the output's);
2. between the two renames of the swap (microseconds): no folder under the output's name, and the previous
   content complete under `.<name>.<random>.previous` (rename it back to restore);
3. after the swap, while the previous content is deleted: the new folder in place; a partly deleted `.previous`.

Model and processor folders written by `save_pretrained` are made atomic file by file instead (other files of those
folders, e.g. Trainer checkpoints, must stay): see `fpn_seg.configuration_semantic_fpn.save_folder_atomically`.
"""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


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


def temporary_sibling(target: str | os.PathLike, suffix: str = ".partial") -> Path:
    """A new empty hidden folder `.<name>.<random><suffix>` next to `target` (its parents created)."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    _ordinary_permissions(folder)
    return folder


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
        previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".previous", dir=target.parent))
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


__all__ = ["atomic_output_dir", "check_output_dir", "replace_directory", "temporary_sibling", "write_file_atomically"]
