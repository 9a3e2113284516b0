"""Fine-tune Semantic FPN with the transformers `Trainer`, on mmseg's recipe by default.

    python -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes --data_dir data/cityscapes --output_dir runs/r50 \
        --backbone_name_or_path converted/resnet50_v1c
    torchrun --nproc_per_node 4 -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes ...   (or `fpn-seg train`)
    python -m fpn_seg.train --recipe ... --output_dir runs/r50 --resume_from_checkpoint last
    python -m fpn_seg.train --recipe ... --model_name_or_path runs/r50 --eval_only --output_dir runs/r50_eval

**Arguments** (`fpn_seg.train_arguments`). The fields of [`ModelArguments`], [`DataArguments`], [`RecipeArguments`]
and `TrainingArguments`, as flags or in a recipe: a YAML or JSON file, or the name of a built-in one in
`fpn_seg/recipes/` (one per mmseg seed config). Built-in defaults < recipe < command-line flags. An unknown recipe
key is an error naming the key and the file.

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

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from datasets import Dataset, DatasetDict, Image
from transformers import set_seed
from transformers.utils import logging

from .backbone_weights import semantic_fpn_from_pretrained_backbone
from .cli import run_command
from .configuration_resnet_v1c import ResNetV1cConfig
from .configuration_semantic_fpn import SemanticFPNConfig
from .data import (
    EvalTransform,
    TrainTransform,
    check_label_policy,
    collate_same_size,
    load_ade20k,
    load_cityscapes,
    load_image_label_dataset,
)
from .image_processing_semantic_fpn import SemanticFPNImageProcessor
from .image_reading import label_to_tensor, open_image
from .metrics import make_compute_metrics, save_evaluation_report
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, check_label_values
from .presets import PRESETS, get_preset, preset_config
from .train_arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    available_recipes,
    available_workers,
    parse_arguments,
    read_recipe,
)
from .resume import resolve_checkpoint
from .data.reading import TrainingDataError
from .trainer import AugmentedTrainDataset, EpochShuffleSampler, SemanticFPNTrainer
from .visualize import plot_training_curves

logger = logging.get_logger(__name__)



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


def build_model(
    model_args: ModelArguments, ignore_mismatched_sizes: bool = False
) -> SemanticFPNForSemanticSegmentation:
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
        with open_image(item["bytes"] or item["path"], item["path"], decode=False) as image:
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


# ------------------------------------------------------------------------------------------------ main


def run_training(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train (and/or evaluate) as the arguments say; returns the final evaluation metrics (`{}` without eval split).
    Errors raise; [`main`] is the command line around it."""
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
        augment_on = data_args.augment_on
        if augment_on == "auto":
            augment_on = "workers" if training_args.device.type == "cpu" else "device"
        train_dataset = AugmentedTrainDataset(
            train_dataset, TrainTransform(processor, crop_size), data_seed, augment_on=augment_on
        )
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


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg train` / `python -m fpn_seg.train`: [`run_training`]; returns the exit status. Everything a user can
    fix (arguments, recipe, data, output folder) is checked before training starts, so those errors are usage errors
    (2), printed as one line instead of a traceback."""

    def work() -> None:
        run_training(argv)

    return run_command(
        "train", work, usage=(ValueError, KeyError, OSError, StrictDataclassError), failed=(TrainingDataError,)
    )


__all__ = [
    "AugmentedTrainDataset",
    "DataArguments",
    "EpochShuffleSampler",
    "ModelArguments",
    "RecipeArguments",
    "SemanticFPNTrainer",
    "available_recipes",
    "available_workers",
    "build_model",
    "build_processor",
    "check_eval_batch_size",
    "check_training_output_dir",
    "check_first_batch_labels",
    "convert_to_sync_batch_norm",
    "load_training_data",
    "main",
    "parse_arguments",
    "read_recipe",
    "resolve_checkpoint",
    "run_training",
]

if __name__ == "__main__":
    sys.exit(main())
