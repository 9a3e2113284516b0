"""Fine-tune Semantic FPN with the transformers `Trainer`, on mmseg's recipe by default.

    python -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes --data_dir data/cityscapes --output_dir runs/r50 \
        --backbone_name_or_path converted/resnet50_v1c
    torchrun --nproc_per_node 4 -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes ...   (or `fpn-seg train`)
    python -m fpn_seg.train --recipe ... --output_dir runs/r50 --resume_from_checkpoint last
    python -m fpn_seg.train --recipe ... --model_name_or_path runs/r50 --eval_only --output_dir runs/r50_eval

**Arguments.** The fields of [`ModelArguments`], [`DataArguments`], [`RecipeArguments`] and `TrainingArguments`, as
flags or in a recipe: a YAML or JSON file, or the name of a built-in one in `fpn_seg/recipes/` (one per mmseg seed
config). Built-in defaults < recipe < command-line flags. An unknown recipe key is an error naming the key and the
file.

**Model.** `--preset` alone trains from scratch; `--preset` with `--backbone_name_or_path` (a folder written by
`fpn-seg convert --backbone`) starts from ImageNet weights as mmseg does; `--model_name_or_path` fine-tunes (or,
with `--eval_only`, evaluates) a saved Semantic FPN.

**Set for you** whatever the recipe says: `remove_unused_columns=False` (the transforms need the image and label
columns), `batch_eval_metrics=True` (the confusion matrix streams batch by batch) and `label_names=["labels"]`; and,
unless given, `ddp_find_unused_parameters=False` (every parameter gets a gradient).
Before training, the first batch of each split is encoded with the model's label policy and checked (values other than
class ids and `ignore_index` are an error naming the split and the policy).

**Evaluation across processes.** Each process turns its logits into class ids at its labels' original resolution, then
pads class ids and labels (with -100, ignored) to the largest height and width among the processes, so images of
different sizes evaluate under `torchrun` too; the Trainer's gather drops the samples duplicated to even out the last
batch. Before evaluating, BatchNorm statistics are copied from the main process (whose weights are the ones saved):
DDP leaves each process with the statistics of its own last batch.

**Output folder.** The model and processor, `checkpoint-<step>/` folders, `trainer_state.json`, `train_results.json`,
`eval_results.json`, `eval_iou_table.txt` (per-class IoU and accuracy, as mmseg prints it),
`eval_confusion_matrix.json` and `training_curves.png`.
"""

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import yaml
from huggingface_hub.errors import StrictDataclassError
from datasets import Dataset, DatasetDict, Image
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import logging

from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .backbone_weights import semantic_fpn_from_pretrained_backbone
from .data import (
    EvalTransform,
    TrainTransform,
    check_label_policy,
    collate_same_size,
    load_ade20k,
    load_cityscapes,
    load_image_label_dataset,
)
from .image_processing_semantic_fpn import SemanticFPNImageProcessor, label_to_tensor
from .metrics import make_compute_metrics, save_evaluation_report
from .trainer import AugmentedTrainDataset, EpochShuffleSampler, SemanticFPNTrainer
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, check_label_values
from .presets import PRESETS, get_preset, preset_config
from .visualize import plot_training_curves

logger = logging.get_logger(__name__)

RECIPES_DIR = Path(__file__).parent / "recipes"
# Values of --resume_from_checkpoint that mean "the newest complete checkpoint in --output_dir".
RESUME_FROM_LATEST = ("last", "latest", "true")
# The file a Trainer checkpoint gets last: a checkpoint folder without it was interrupted while being written.
CHECKPOINT_COMPLETE_MARKER = "trainer_state.json"


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


# ------------------------------------------------------------------------------------------------ arguments


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
    recipe_finder = argparse.ArgumentParser(add_help=False)
    recipe_finder.add_argument("--recipe")
    recipe = recipe_finder.parse_known_args(argv)[0].recipe
    if recipe:
        parser.set_defaults(**_typed_recipe_values(parser, read_recipe(recipe), str(recipe_path(recipe))))
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    for key, value in FORCED_TRAINING_SETTINGS.items():
        setattr(training_args, key, value)
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False  # every parameter gets a gradient: skip DDP's extra pass
    return model_args, data_args, recipe_args, training_args


# ------------------------------------------------------------------------------------------------ model


def _json_object(value: str | dict | None, flag: str) -> dict[str, Any]:
    """A JSON-object flag (or a mapping written directly in a YAML recipe) as a dict; `{}` when unset."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--{flag} must be a JSON object such as '{{\"depth\": 18}}', got {value!r} ({error})."
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"--{flag} must be a JSON object such as '{{\"depth\": 18}}', got {value!r}.")
    return parsed


def build_model(model_args: ModelArguments, ignore_mismatched_sizes: bool = False) -> SemanticFPNForSemanticSegmentation:
    """A saved model, a preset on a converted ImageNet backbone, or a preset from scratch (+ overrides)."""
    config_overrides = _json_object(model_args.config_overrides, "config_overrides")
    backbone_overrides = _json_object(model_args.backbone_overrides, "backbone_overrides")
    if model_args.model_name_or_path:
        if model_args.backbone_name_or_path:
            raise ValueError("Give --model_name_or_path (a whole Semantic FPN) or --backbone_name_or_path, not both.")
        if backbone_overrides:
            logger.warning("--backbone_overrides is ignored with --model_name_or_path (its config has the backbone).")
        config = None
        if config_overrides:  # through the config class, so that they are normalised and checked like any config
            saved = SemanticFPNConfig.from_pretrained(model_args.model_name_or_path)
            config = SemanticFPNConfig.from_dict({**saved.to_dict(), **config_overrides})
        return SemanticFPNForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes
        )
    if model_args.backbone_name_or_path:
        # Backbone config and weights come from the folder; overrides may only change what the weights allow.
        return semantic_fpn_from_pretrained_backbone(
            model_args.backbone_name_or_path, model_args.preset, backbone_overrides, **config_overrides
        )
    if not model_args.preset:
        raise ValueError(f"Give --preset (one of {', '.join(PRESETS)}) or --model_name_or_path.")
    backbone_overrides.setdefault("depth", get_preset(model_args.preset).depth)
    logger.warning(
        "Training from scratch: no --backbone_name_or_path (mmseg's recipes start from ImageNet ResNetV1c weights; "
        "convert them with `fpn-seg convert --backbone ...`)."
    )
    config = preset_config(
        model_args.preset, backbone_config=ResNetV1cConfig(**backbone_overrides), **config_overrides
    )
    return SemanticFPNForSemanticSegmentation(config)


def build_processor(
    model_args: ModelArguments, data_args: DataArguments, config: SemanticFPNConfig
) -> SemanticFPNImageProcessor:
    """The processor of the run: the label policy always from the model config; the test scale from `--scale`, else
    from the saved model's processor (`--model_name_or_path` with a `preprocessor_config.json`; its other settings
    too), else from `--preset`, else the processor's default."""
    scale = {"scale": tuple(data_args.scale)} if data_args.scale else {}
    if model_args.model_name_or_path:
        try:
            return SemanticFPNImageProcessor.from_pretrained(
                model_args.model_name_or_path, **config.label_policy.processor_options(), **scale
            )
        except OSError:  # no preprocessor_config.json: the config alone
            pass
    if not scale and model_args.preset:
        scale = {"scale": get_preset(model_args.preset).test_scale}
    return SemanticFPNImageProcessor.from_model_config(config, **scale)


def check_training_output_dir(output_dir: Path, checkpoint: str | None, overwrite: bool) -> None:
    """Refuse to train into a folder that already holds a model, unless resuming or told to overwrite it
    (transformers 5 dropped `overwrite_output_dir`, and `save_model` would silently replace that model)."""
    if checkpoint is None and not overwrite and (output_dir / "config.json").is_file():
        raise FileExistsError(
            f"--output_dir {output_dir} already holds a model (config.json). Pass --overwrite_output_dir to replace "
            "it, --resume_from_checkpoint to continue its run, or choose another folder."
        )


def convert_to_sync_batch_norm(model: torch.nn.Module, world_size: int, device: torch.device) -> torch.nn.Module:
    """`model` with `torch.nn.SyncBatchNorm` in place of its BatchNorms when training on several CUDA processes."""
    if world_size <= 1:
        logger.warning("--sync_bn has no effect in a single process; BatchNorm is left as it is.")
        return model
    if device.type != "cuda":
        raise ValueError(
            f"--sync_bn needs CUDA devices with NCCL (torch's SyncBatchNorm has no {device.type} implementation); "
            "drop --sync_bn to train with per-process BatchNorm statistics."
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


# ------------------------------------------------------------------------------------------------ data


def load_training_data(data_args: DataArguments, splits: Sequence[str] | None = None) -> DatasetDict:
    """The splits `splits` (default: train and eval split) of the dataset `data_args` names, keyed by those names.

    For `folder` / `hub` datasets a missing split is left out; the official layouts raise on a missing split.
    """
    if data_args.data_dir is None:
        raise ValueError("--data_dir is required: the dataset root folder (or repo id with --dataset hub).")
    splits = list(dict.fromkeys(splits or (data_args.train_split, data_args.eval_split)))
    official = {"cityscapes": load_cityscapes, "ade20k": load_ade20k}
    if data_args.dataset in official:
        loader = official[data_args.dataset]
        # One call per split: the loaders rename splits (`val` -> `validation`); keep the names asked for.
        loaded = {split: loader(data_args.data_dir, splits=(split,)) for split in splits}
        return DatasetDict({split: next(iter(loaded[split].values())) for split in splits})
    if data_args.dataset in ("folder", "hub"):
        source = data_args.data_dir
        if data_args.dataset == "hub":
            from datasets import load_dataset

            source = load_dataset(data_args.data_dir)
        loaded = load_image_label_dataset(source, data_args.image_column, data_args.label_column)
        return DatasetDict({split: loaded[split] for split in splits if split in loaded})
    raise ValueError(f"--dataset {data_args.dataset!r} is not one of cityscapes, ade20k, folder, hub.")


def check_first_batch_labels(
    dataset: Dataset, processor: SemanticFPNImageProcessor, config: SemanticFPNConfig, batch_size: int, where: str
) -> None:
    """Encode the labels of the first `batch_size` examples of `dataset` (raw columns, before any transform) with the
    processor's label policy and raise a `ValueError` naming `where` and the policy when a value is neither a class
    id nor `ignore_index` (or when the label files are marked with another policy)."""
    examples = dataset[: max(1, batch_size)]
    for position, label in enumerate(examples["label"]):
        check_label_policy(label, processor)
        label_ids = processor.encode_labels(label_to_tensor(label))
        try:
            check_label_values(label_ids, config)
        except ValueError as error:
            raise ValueError(
                f"{where}, example {position} of the first batch, after the label policy "
                f"({config.label_policy.describe()}, {config.num_labels} classes): {error}"
            ) from None


def _label_sizes(dataset: Dataset) -> set[tuple[int, int]]:
    """The (width, height) of every label image, read from the file headers (no decoding)."""
    sizes = set()
    for item in dataset.cast_column("label", Image(decode=False))["label"]:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        with PIL.Image.open(source) as image:
            sizes.add(image.size)
    return sizes


def check_eval_batch_size(dataset: Dataset, batch_size: int, where: str) -> None:
    """Evaluation keeps labels at their original size: a batch of several examples needs one size throughout."""
    if batch_size <= 1:
        return
    sizes = _label_sizes(dataset)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5]) + (" ..." if len(sizes) > 5 else "")
        raise ValueError(
            f"{where} has images of {len(sizes)} sizes ({shown}); evaluation keeps labels at their original size, "
            f"so batches cannot be stacked: use --per_device_eval_batch_size 1 (got {batch_size})."
        )


# ------------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def resolve_checkpoint(value: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names: a path, or `last` for the newest complete
    `checkpoint-<step>` in `output_dir` (a folder without `trainer_state.json` was interrupted while saving)."""
    if value is None or value.strip().lower() in ("", "false", "none"):
        return None
    if value.strip().lower() in RESUME_FROM_LATEST:
        folders = [path for path in Path(output_dir).glob("checkpoint-*") if _checkpoint_step(path) >= 0]
        complete = [path for path in folders if (path / CHECKPOINT_COMPLETE_MARKER).is_file()]
        if not complete:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value}: no complete checkpoint-<step> folder (with "
                f"{CHECKPOINT_COMPLETE_MARKER}) in {output_dir}."
            )
        newest = max(complete, key=_checkpoint_step)
        skipped = sorted(path.name for path in folders if _checkpoint_step(path) > _checkpoint_step(newest))
        if skipped:
            names = ", ".join(skipped)
            logger.warning(f"Skipping incomplete checkpoint(s) {names} (no {CHECKPOINT_COMPLETE_MARKER}).")
        return str(newest)
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    if not (path / CHECKPOINT_COMPLETE_MARKER).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {value}: not a complete Trainer checkpoint (no {CHECKPOINT_COMPLETE_MARKER}, "
            "which the Trainer writes last: the run was probably stopped while saving). Resume from an earlier "
            "checkpoint-<step> folder, or pass `last`."
        )
    return str(path)




# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train (and/or evaluate) as the arguments say; returns the final evaluation metrics (`{}` without eval split)."""
    model_args, data_args, recipe_args, training_args = parse_arguments(argv)
    set_seed(training_args.seed)
    checkpoint = None
    if not recipe_args.eval_only:
        checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
        check_training_output_dir(Path(training_args.output_dir), checkpoint, recipe_args.overwrite_output_dir)
    model = build_model(model_args, recipe_args.ignore_mismatched_sizes)
    config = model.config
    preset = get_preset(model_args.preset) if model_args.preset else None
    crop_size = tuple(data_args.crop_size) if data_args.crop_size else (preset.crop_size if preset else (512, 512))
    processor = build_processor(model_args, data_args, config)

    splits = [data_args.eval_split] if recipe_args.eval_only else None
    datasets = load_training_data(data_args, splits)
    where = f"--dataset {data_args.dataset} --data_dir {data_args.data_dir}"
    train_dataset = eval_dataset = None
    if not recipe_args.eval_only:
        if data_args.train_split not in datasets:
            raise ValueError(f"{where} has no split {data_args.train_split!r} (splits: {list(datasets)}).")
        train_dataset = datasets[data_args.train_split]
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
        if len(train_dataset) == 0:
            raise ValueError(f"{where}: the training split {data_args.train_split!r} has no examples to train on.")
        check_first_batch_labels(
            train_dataset, processor, config, training_args.per_device_train_batch_size,
            f"{where}, split {data_args.train_split!r}",
        )  # fmt: skip
        data_seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
        train_dataset = AugmentedTrainDataset(train_dataset, TrainTransform(processor, crop_size), data_seed)
    if data_args.eval_split in datasets:
        eval_dataset = datasets[data_args.eval_split]
        if data_args.max_eval_samples:
            eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
        eval_where = f"{where}, split {data_args.eval_split!r}"
        check_first_batch_labels(eval_dataset, processor, config, training_args.per_device_eval_batch_size, eval_where)
        check_eval_batch_size(eval_dataset, training_args.per_device_eval_batch_size, eval_where)
        eval_dataset = eval_dataset.with_transform(EvalTransform(processor))
    elif recipe_args.eval_only or training_args.eval_strategy != "no":
        raise ValueError(f"{where} has no split {data_args.eval_split!r} to evaluate on (splits: {list(datasets)}).")

    if recipe_args.sync_bn:
        model = convert_to_sync_batch_norm(model, training_args.world_size, training_args.device)

    compute_metrics = make_compute_metrics(config)
    trainer = SemanticFPNTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_same_size,
        compute_metrics=compute_metrics,
        momentum=recipe_args.momentum,
    )
    output_dir = Path(training_args.output_dir)
    if not recipe_args.eval_only:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(str(output_dir))  # every process calls it; the main process writes
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero():
            processor.save_pretrained(str(output_dir))
    results: dict[str, float] = {}
    if eval_dataset is not None:
        results = trainer.evaluate()
        trainer.save_metrics("eval", results)
        if trainer.is_world_process_zero():
            print(save_evaluation_report(output_dir, compute_metrics, config))
    if recipe_args.plot and not recipe_args.eval_only and trainer.is_world_process_zero():
        backbone = config.backbone_config
        depth = f"-{backbone.depth}" if getattr(backbone, "depth", None) else ""
        run_name = Path(recipe_args.recipe).stem if recipe_args.recipe else model_args.preset or "Semantic FPN"
        title = f"{run_name}: {backbone.model_type}{depth} backbone"
        plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=title)
    if trainer.is_world_process_zero():
        print(f"Model, image processor and reports in {output_dir.resolve()}")
    return results


def command_line(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg train` / `python -m fpn_seg.train`: [`main`], with the errors a user can fix (bad arguments, recipe,
    data or output folder) printed as one line instead of a traceback; returns the exit status (0, or 2)."""
    try:
        main(argv)
    except (ValueError, KeyError, OSError, StrictDataclassError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"fpn-seg train: error: {type(error).__name__}: {message}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "AugmentedTrainDataset",
    "DataArguments",
    "EpochShuffleSampler",
    "ModelArguments",
    "RecipeArguments",
    "SemanticFPNTrainer",
    "available_recipes",
    "build_model",
    "build_processor",
    "check_eval_batch_size",
    "check_training_output_dir",
    "check_first_batch_labels",
    "command_line",
    "convert_to_sync_batch_norm",
    "load_training_data",
    "main",
    "parse_arguments",
    "read_recipe",
    "resolve_checkpoint",
]

if __name__ == "__main__":
    sys.exit(command_line())
