"""Loading a saved model folder (or hub id) with its image processor for the commands (`predict`, `export`), with a
one-line error naming the folder and what it lacks instead of a traceback.
"""

import re
import sys
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers.utils import (
    CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .image_processing_semantic_fpn import SemanticFPNImageProcessor

WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelFolderError(ValueError):
    """A model folder or hub id that cannot be loaded; the message names it and what is wrong."""


def check_model_folder(folder: Path, argument: str = "MODEL") -> bool:
    """Raise a `ModelFolderError` naming what a model folder lacks; returns whether it has a processor config."""
    if not folder.is_dir():
        raise ModelFolderError(
            f"{argument} {str(folder)!r} is a file; expected a model folder (config.json + weights) or a hub id."
        )
    missing = []
    if not (folder / CONFIG_NAME).is_file():
        missing.append(CONFIG_NAME)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES[:3])})")
    if missing:
        raise ModelFolderError(
            f"{argument} folder {str(folder)!r} has no {' and no '.join(missing)}: it is not a saved model. Save one "
            "with model.save_pretrained(folder) and processor.save_pretrained(folder)."
        )
    return (folder / IMAGE_PROCESSOR_NAME).is_file()


def _source(name: str, argument: str) -> tuple[str, bool | None]:
    """(what to load from, whether it has a processor config: None for a hub id) of a folder or hub id."""
    folder = Path(name).expanduser()
    if folder.exists():
        return str(folder), check_model_folder(folder, argument)
    if not _HUB_ID.match(name):
        raise ModelFolderError(f"{argument} {name!r}: no such model folder (and not a hub id like 'org/name').")
    if Path(name.split("/")[0]).is_dir():  # `runs/modle`: a typo in a local path, not the hub namespace `runs`
        raise ModelFolderError(
            f"{argument} {name!r}: no such model folder (there is a local folder {name.split('/')[0]!r}, so it is "
            "not taken as a hub id); check the path."
        )
    return name, None


def load_processor(source: str, config, where: str, has_processor: bool | None = True, trust_remote_code=False):
    """The image processor saved in `source` (a folder or hub id), or, when it has none, the one built from the
    model's `config` (`SemanticFPNImageProcessor.from_model_config`, with a note on stderr). `where` names the
    source in messages; `has_processor` None means unknown (a hub id)."""
    from transformers import AutoImageProcessor

    processor = None
    if has_processor is not False:
        try:
            processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as error:
            if has_processor or not isinstance(error, OSError):
                raise ModelFolderError(f"Cannot load the image processor of the {where}: {error}") from error
    if processor is None:
        processor = SemanticFPNImageProcessor.from_model_config(config)
        print(
            f"note: the {where} has no {IMAGE_PROCESSOR_NAME}; using SemanticFPNImageProcessor.from_model_config(config): "
            f"test size {processor.size}, mmseg's mean/std, the config's label policy.",
            file=sys.stderr,
        )
    if not all(hasattr(processor, method) for method in ("test_size", "resize_image", "normalize_image")):
        raise ModelFolderError(
            f"The {where} has a {type(processor).__name__}; a SemanticFPNImageProcessor (a Semantic FPN model) is "
            "needed."
        )
    return processor


def load_model(
    name: str, trust_remote_code: bool = False, argument: str = "MODEL", model_type: str | None = None
) -> tuple[torch.nn.Module, SemanticFPNImageProcessor]:
    """A model folder or hub id -> (model in eval mode on the CPU, image processor); `ModelFolderError` when it cannot
    be loaded. Without a `preprocessor_config.json` the processor is built from the config and a note is printed.
    `argument` is the name of the command-line argument, used in messages; `model_type` (e.g. "semantic_fpn"), when
    given, is checked in the config before the weights are read."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    source, has_processor = _source(name, argument)
    where = f"hub model {source!r}" if has_processor is None else f"model folder {source!r}"
    try:
        config = None  # read once here when it is checked, then handed to the model
        if model_type is not None:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            if config.model_type != model_type:
                architectures = ", ".join(config.architectures or []) or "no architecture named"
                raise ModelFolderError(
                    f"The {where} holds a {config.model_type!r} model ({architectures}), not a Semantic FPN model "
                    f"(model_type {model_type!r})."
                )
        model = AutoModelForSemanticSegmentation.from_pretrained(
            source, config=config, trust_remote_code=trust_remote_code
        )
    except ModelFolderError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, StrictDataclassError) as error:
        hint = " Pass --trust-remote-code if you trust the code it ships." if "trust_remote_code" in str(error) else ""
        raise ModelFolderError(f"Cannot load the {where}: {error}{hint}") from error
    processor = load_processor(source, model.config, where, has_processor, trust_remote_code)
    return model.eval(), processor


__all__ = ["WEIGHT_FILES", "ModelFolderError", "check_model_folder", "load_model", "load_processor"]
