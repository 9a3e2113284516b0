"""Fine-tune Semantic FPN with the transformers `Trainer`, on mmseg's recipe by default.

    python -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes --data_dir data/cityscapes --output_dir runs/r50
    torchrun --nproc_per_node 4 -m fpn_seg.train --recipe fpn_r50_512x1024_80k_cityscapes ...

A recipe is a YAML or JSON file (or the name of a built-in one in `fpn_seg/recipes/`) whose keys are the fields of
`ModelArguments`, `DataArguments`, `RecipeArguments` and `TrainingArguments`; command-line flags override it.
"""

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from .configuration_semantic_fpn import PRESETS, SemanticFPNConfig, get_preset
from .configuration_resnet_v1c import ResNetV1cConfig
from .data import EvalTransform, TrainTransform, collate_same_size, load_ade20k, load_cityscapes, load_image_label_dataset
from .image_processing_semantic_fpn import SemanticFPNImageProcessor
from .metrics import format_iou_table, make_compute_metrics
from .modeling_resnet_v1c import ResNetV1cBackbone
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, check_label_values
from .visualize import plot_training_curves

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelArguments:
    """Which model to train: a preset architecture (optionally narrowed), a saved model, and/or a backbone."""

    preset: str | None = field(
        default=None, metadata={"help": f"mmseg config name, one of {', '.join(PRESETS)}: architecture + label policy."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved Semantic FPN folder or hub id to fine-tune (instead of a preset)."}
    )
    backbone_name_or_path: str | None = field(
        default=None, metadata={"help": "A converted ImageNet ResNetV1c backbone folder to start from."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": 'JSON of config fields, e.g. \'{"neck_channels": 64}\' or backbone widths.'}
    )
    backbone_overrides: str | None = field(
        default=None, metadata={"help": 'JSON of backbone config fields, e.g. \'{"depth": 18, "base_channels": 16}\'.'}
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
    """mmseg-specific training settings that `TrainingArguments` has no field for."""

    recipe: str | None = field(default=None, metadata={"help": "YAML/JSON recipe file or built-in recipe name."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (weight decay applies to every parameter)."})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm across processes (CUDA + NCCL only)."})
    plot: bool = field(default=True, metadata={"help": "Write training_curves.png to the output folder."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeArguments, TrainingArguments)

# Settings a segmentation run needs whatever the recipe says: image/label columns must reach the transforms, the
# metric streams batch by batch, and the label tensor is called "labels".
FORCED_TRAINING_SETTINGS = {"remove_unused_columns": False, "batch_eval_metrics": True, "label_names": ["labels"]}


def available_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def read_recipe(recipe: str) -> dict:
    """The key/value pairs of a recipe file or built-in recipe; unknown keys are an error naming them."""
    path = Path(recipe)
    if not path.exists():
        path = RECIPES_DIR / f"{recipe}.yaml"
        if not path.exists():
            raise FileNotFoundError(
                f"Recipe {recipe!r} is neither a file nor a built-in recipe ({', '.join(available_recipes())})."
            )
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must hold a mapping of argument names to values, got {type(values).__name__}.")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Recipe {path} has unknown keys: {', '.join(unknown)}. Keys must be fields of ModelArguments, "
            "DataArguments, RecipeArguments or transformers.TrainingArguments (see `python -m fpn_seg.train --help`)."
        )
    return values


def parse_arguments(argv: list[str] | None = None):
    """(model, data, recipe, training) arguments: built-in defaults < recipe file < command-line flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    recipe_name = None
    if "--recipe" in argv:
        recipe_name = argv[argv.index("--recipe") + 1]
    elif any(arg.startswith("--recipe=") for arg in argv):
        recipe_name = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("--recipe="))
    if recipe_name:
        parser.set_defaults(**read_recipe(recipe_name))
    model_args, data_args, recipe_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    for key, value in FORCED_TRAINING_SETTINGS.items():
        setattr(training_args, key, value)
    return model_args, data_args, recipe_args, training_args


def build_model(model_args: ModelArguments) -> SemanticFPNForSemanticSegmentation:
    """A model from a saved folder, or from a preset (+ overrides), optionally with a pretrained backbone."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if model_args.model_name_or_path:
        return SemanticFPNForSemanticSegmentation.from_pretrained(model_args.model_name_or_path, **overrides)
    if not model_args.preset:
        raise ValueError("Give --preset (one of the mmseg config names) or --model_name_or_path.")
    backbone_fields = json.loads(model_args.backbone_overrides) if model_args.backbone_overrides else {}
    backbone_fields.setdefault("depth", get_preset(model_args.preset).depth)
    config = SemanticFPNConfig.from_preset(
        model_args.preset, backbone_config=ResNetV1cConfig(**backbone_fields), **overrides
    )
    model = SemanticFPNForSemanticSegmentation(config)
    if model_args.backbone_name_or_path:
        pretrained = ResNetV1cBackbone.from_pretrained(model_args.backbone_name_or_path)
        model.backbone.load_state_dict(pretrained.state_dict(), strict=True)
    return model


def load_training_data(data_args: DataArguments):
    """The `DatasetDict` that `data_args` names (splits `train` / `validation` for the official layouts)."""
    if data_args.data_dir is None:
        raise ValueError("--data_dir is required: the dataset root folder (or repo id with --dataset hub).")
    if data_args.dataset == "cityscapes":
        return load_cityscapes(data_args.data_dir, splits=(data_args.train_split, data_args.eval_split))
    if data_args.dataset == "ade20k":
        return load_ade20k(data_args.data_dir, splits=(data_args.train_split, data_args.eval_split))
    if data_args.dataset in ("folder", "hub"):
        source = data_args.data_dir
        if data_args.dataset == "hub":
            from datasets import load_dataset

            source = load_dataset(data_args.data_dir)
        return load_image_label_dataset(source, data_args.image_column, data_args.label_column)
    raise ValueError(f"--dataset {data_args.dataset!r} is not one of cityscapes, ade20k, folder, hub.")


class SemanticFPNTrainer(Trainer):
    """`Trainer` with mmseg's optimiser: SGD with momentum and weight decay on every parameter (the default
    `Trainer` exempts biases and norm weights from weight decay; mmseg's sem_fpn recipe does not)."""

    def __init__(self, *args, momentum: float = 0.9, **kwargs):
        training_args = kwargs["args"]
        optimizer = (
            torch.optim.SGD,
            {"lr": training_args.learning_rate, "momentum": momentum, "weight_decay": training_args.weight_decay},
        )
        super().__init__(*args, optimizer_cls_and_kwargs=optimizer, **kwargs)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, recipe_args, training_args = parse_arguments(argv)
    set_seed(training_args.seed)
    model = build_model(model_args)
    config = model.config
    preset = get_preset(model_args.preset) if model_args.preset else None
    scale = tuple(data_args.scale) if data_args.scale else (preset.test_scale if preset else None)
    crop_size = tuple(data_args.crop_size) if data_args.crop_size else (preset.crop_size if preset else (512, 512))
    processor = SemanticFPNImageProcessor.from_model_config(config, **({"scale": scale} if scale else {}))

    datasets = load_training_data(data_args)
    train_split = "train" if data_args.dataset in ("cityscapes", "ade20k") else data_args.train_split
    eval_split = "validation" if data_args.dataset in ("cityscapes", "ade20k") else data_args.eval_split
    train_dataset = datasets[train_split]
    eval_dataset = datasets[eval_split] if eval_split in datasets else None
    if data_args.max_train_samples:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and data_args.max_eval_samples:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))
    # seed=None: augmentations draw from torch's global RNG, which the Trainer seeds and checkpoints (exact resumes).
    train_dataset = train_dataset.with_transform(TrainTransform(processor, crop_size))
    if eval_dataset is not None:
        eval_dataset = eval_dataset.with_transform(EvalTransform(processor))
    check_label_values(torch.as_tensor(train_dataset[0]["labels"]), config)

    if recipe_args.sync_bn and training_args.world_size > 1:
        if not torch.cuda.is_available():
            raise ValueError("--sync_bn needs CUDA GPUs (torch's SyncBatchNorm has no CPU/gloo implementation).")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    trainer = SemanticFPNTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collate_same_size,
        compute_metrics=make_compute_metrics(config),
        momentum=recipe_args.momentum,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    results = {}
    if trainer.is_world_process_zero():
        trainer.save_model(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)
    if eval_dataset is not None:
        results = trainer.evaluate()
        if trainer.is_world_process_zero():
            print(format_iou_table(results, config.id2label, prefix="eval_"))
            Path(training_args.output_dir, "eval_results.json").write_text(json.dumps(results, indent=2, default=str))
    if recipe_args.plot and trainer.is_world_process_zero():
        plot_training_curves(trainer.state.log_history, Path(training_args.output_dir) / "training_curves.png")
    return results


__all__ = [
    "DataArguments",
    "ModelArguments",
    "RecipeArguments",
    "SemanticFPNTrainer",
    "available_recipes",
    "build_model",
    "load_training_data",
    "main",
    "parse_arguments",
    "read_recipe",
]

if __name__ == "__main__":
    main()
