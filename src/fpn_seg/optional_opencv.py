"""OpenCV (`opencv-python-headless`, the `[opencv]` extra) where it is installed: the training workers' image
operations and decoding, and the fast PNG encoder of predict's overlays. Everything that uses it has an exact or
equivalent path without it."""

import importlib
import os
from functools import lru_cache
from types import ModuleType

import torch

_THREADS_SET_IN: list[int] = []  # the process in which OpenCV's threads were last turned off


@lru_cache(maxsize=1)
def _import_opencv() -> ModuleType | None:
    try:
        return importlib.import_module("cv2")
    except ImportError:
        return None


def load_opencv() -> ModuleType | None:
    """`cv2` if installed, else `None`. Inside a DataLoader worker, OpenCV's own threads are turned off
    (`cv2.setNumThreads(0)`, as mmseg does): the workers are the parallelism."""
    cv2 = _import_opencv()
    if cv2 is not None and torch.utils.data.get_worker_info() is not None and _THREADS_SET_IN != [os.getpid()]:
        cv2.setNumThreads(0)
        _THREADS_SET_IN[:] = [os.getpid()]
    return cv2


__all__ = ["load_opencv"]
