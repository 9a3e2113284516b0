"""The arguments of `fpn-seg train`: [`ModelArguments`], [`DataArguments`], [`RecipeArguments`] beside transformers'
`TrainingArguments`, and recipes (YAML or JSON files, or the built-in ones in `fpn_seg/recipes/`, one per mmseg seed
config) read under the command-line flags: built-in defaults < recipe < flags.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .presets import PRESETS

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelArguments:
    """Which model to train: a preset architecture (optionally narrowed), a converted backbone, or a saved model."""

    preset: str | None = field(
        default=None,
        metadata={"help": f"mmseg config name, one of {', '.join(PRESETS)}: architecture + label policy."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved Semantic FPN folder or hub id to fine-tune (instead of a preset)."}
    )
    backbone_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A converted ImageNet ResNetV1c backbone folder to start from (fpn-seg convert --backbone)."},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": 'JSON object of SemanticFPNConfig fields, e.g. \'{"neck_channels": 64}\'.'}
    )
    backbone_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON object of ResNetV1cConfig fields, e.g. \'{"depth": 18, "norm_eval": true}\'.'},
    )


@dataclass
class DataArguments:
    """Where the data is and how it is cropped; defaults come from the preset."""

    dataset: str = field(
        default="cityscapes",
        metadata={"help": "cityscapes | ade20k (official folders or zips), folder (a `prepare` output, a "
                  "`save_to_disk` folder or Parquet files) or hub (a `datasets` repo id)."},
    )  # fmt: skip
    data_dir: str | None = field(default=None, metadata={"help": "Dataset root folder (or repo id for `hub`)."})
    train_split: str = "train"
    eval_split: str = "validation"
    image_column: str = "image"
    label_column: str = "label"
    crop_size: list[int] | None = field(default=None, metadata={"help": "Training crop (height, width)."})
    scale: list[int] | None = field(default=None, metadata={"help": "mmseg (long, short) scale; test scale too."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    augment_on: str = field(
        default="auto",
        metadata={"help": "Where the training augmentation runs: auto (the training device unless it is the CPU, "
                  "else the DataLoader workers), device (workers only decode) or workers.",
                  "choices": ["auto", "device", "workers"]},
    )  # fmt: skip


@dataclass
class RecipeArguments:
    """mmseg-specific settings that `TrainingArguments` has no field for."""

    recipe: str | None = field(default=None, metadata={"help": "YAML/JSON recipe file or built-in recipe name."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (weight decay applies to every parameter)."})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm across processes (CUDA + NCCL only)."})
    eval_only: bool = field(default=False, metadata={"help": "Evaluate the model on the eval split, no training."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an output folder that already holds a model (replacing it)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "With --model_name_or_path: start a new classifier when the class count changes."},
    )
    plot: bool = field(default=True, metadata={"help": "Write training_curves.png to the output folder."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeArguments, TrainingArguments)

# Settings a segmentation run needs whatever the recipe says: image/label columns must reach the transforms, the
# metric streams batch by batch, and the label tensor is called "labels".
FORCED_TRAINING_SETTINGS = {"remove_unused_columns": False, "batch_eval_metrics": True, "label_names": ["labels"]}
AUTO = "auto"


def available_workers() -> int:
    """`dataloader_num_workers: auto`: the cores this process may run on (`os.sched_getaffinity`), shared among the
    local processes of a distributed run (`LOCAL_WORLD_SIZE`), less one for the training process itself; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // local_processes - 1)


# Fields that also take "auto", resolved before the typed parsing (TrainingArguments wants an int).
AUTO_VALUES = {"dataloader_num_workers": available_workers}


# ------------------------------------------------------------------------------------------------ recipes


def available_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    """The file of a recipe given as a path or as the name of a built-in recipe."""
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return builtin
    raise FileNotFoundError(
        f"Recipe {recipe!r} is neither a file nor a built-in recipe ({', '.join(available_recipes())})."
    )


def read_recipe(recipe: str) -> dict[str, Any]:
    """The key/value pairs of a recipe file or built-in recipe; unknown keys are an error naming them and the file."""
    path = recipe_path(recipe)
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        language = "JSON" if path.suffix == ".json" else "YAML"
        raise ValueError(f"Recipe {path} is not valid {language}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"Recipe {path} must hold a mapping of argument names to values, got {type(values).__name__}."
        )
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Recipe {path} has unknown keys: {', '.join(unknown)}. Keys must be fields of ModelArguments, "
            "DataArguments, RecipeArguments or transformers.TrainingArguments (see `python -m fpn_seg.train --help`)."
        )
    if "recipe" in values:
        raise ValueError(f"Recipe {path}: the key 'recipe' cannot be set inside a recipe.")
    return values


def _typed_recipe_values(parser: argparse.ArgumentParser, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Recipe values converted as argparse converts flags (YAML reads `1e-4` as a string; flags' types apply)."""
    actions = {}
    for action in parser._actions:  # the first action of a field carries its type (`--no_<flag>` ones do not)
        actions.setdefault(action.dest, action)
    typed = {}
    for key, value in values.items():
        if key in AUTO_VALUES and value == AUTO:
            value = AUTO_VALUES[key]()
        convert = getattr(actions.get(key), "type", None)
        try:
            if convert is None or value is None:
                typed[key] = value
            elif isinstance(value, list):
                typed[key] = [convert(item) if isinstance(item, str) else item for item in value]
            else:
                typed[key] = convert(value) if isinstance(value, str) else value
        except (TypeError, ValueError) as error:
            raise ValueError(f"Recipe {source}: {key}={value!r} is not a valid value ({error}).") from None
    return typed


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, RecipeArguments, TrainingArguments]:
    """(model, data, recipe, training) arguments: built-in defaults < recipe file < command-line flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog="fpn-seg train")
    argv = _resolve_auto_flags(argv)
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--recipe")
    finder.add_argument("--dataloader_num_workers", type=int)
    found = finder.parse_known_args(argv)[0]
    defaults = {}
    if found.recipe:
        defaults = _typed_recipe_values(parser, read_recipe(found.recipe), str(recipe_path(found.recipe)))
    workers = found.dataloader_num_workers
    if (defaults.get("dataloader_num_workers", 0) if workers is None else workers) == 0:
        # Loading in the main process: the recipe's worker settings do not apply (TrainingArguments refuses them).
        defaults.update(dataloader_persistent_workers=False, dataloader_prefetch_factor=None)
    parser.set_defaults(**defaults)
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    for key, value in FORCED_TRAINING_SETTINGS.items():
        setattr(training_args, key, value)
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every parameter gets a gradient: skip DDP's extra pass
    if training_args.dataloader_pin_memory:  # pinned batches are worth it only with asynchronous copies
        training_args.accelerator_config.non_blocking = True
    return model_args, data_args, recipe_args, training_args


def _resolve_auto_flags(argv: list[str]) -> list[str]:
    """`--<field> auto` (or `--<field>=auto`) for the fields of `AUTO_VALUES` replaced by the resolved value."""
    resolved = []
    for position, argument in enumerate(argv):
        name, _, inline = argument.partition("=")
        field_name = name.removeprefix("--")
        if name.startswith("--") and field_name in AUTO_VALUES and inline == AUTO:
            argument = f"{name}={AUTO_VALUES[field_name]()}"
        elif position and argv[position - 1].removeprefix("--") in AUTO_VALUES and argument == AUTO:
            argument = str(AUTO_VALUES[argv[position - 1].removeprefix("--")]())
        resolved.append(argument)
    return resolved


__all__ = [
    "ARGUMENT_CLASSES",
    "AUTO_VALUES",
    "FORCED_TRAINING_SETTINGS",
    "RECIPES_DIR",
    "DataArguments",
    "ModelArguments",
    "RecipeArguments",
    "available_recipes",
    "available_workers",
    "parse_arguments",
    "read_recipe",
    "recipe_path",
]
