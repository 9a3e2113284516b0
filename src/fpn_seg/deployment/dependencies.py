"""Optional dependencies (the `[onnx]`, `[openvino]` and `[app]` extras): imported on use, or an `ImportError` naming
the extra."""

import importlib
from types import ModuleType

def require(
    *modules: str, purpose: str = "ONNX export and ONNX Runtime inference", extra: str = "onnx"
) -> list[ModuleType]:
    """The named modules, imported; an `ImportError` naming the missing one and the extra that installs it otherwise."""
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except ImportError as error:
            raise ImportError(
                f"{purpose} needs the {name.split('.')[0]} package, which is not installed ({error}); install the "
                f"extra: pip install 'fpn_seg[{extra}]'."
            ) from None
    return imported


__all__ = ["require"]
