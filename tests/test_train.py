"""Tests of the training entry point `fpn_seg.train`: real `Trainer` runs on tiny synthetic street scenes (CPU), two
gloo processes under torchrun, a resume after SIGKILL, recipes and argument errors.

Speed: tiny models train about 15x faster with one intra-op thread than with two on a loaded two-core machine, so
in-process runs use `torch.set_num_threads(1)` and subprocesses `OMP_NUM_THREADS=1` (torchrun's default as well).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from huggingface_hub.errors import StrictDataclassError
import torch
import yaml
from conftest import tiny_config
from datasets import Dataset, DatasetDict, Image, concatenate_datasets
from safetensors.torch import load_file
from transformers import TrainingArguments

from fpn_seg import ResNetV1cBackbone, ResNetV1cConfig, image_to_tensor
from fpn_seg.presets import PRESETS, preset_config
from fpn_seg.conversion import convert_imagenet_backbone
from fpn_seg.data import TrainTransform, collate_same_size, generate_street_scenes, load_cityscapes
from fpn_seg.data.transforms import mix_seed, raw_label_tensor
from fpn_seg.image_processing_semantic_fpn import SemanticFPNImageProcessor
from fpn_seg.metrics import mean_iou
from fpn_seg.train import (
    AugmentedTrainDataset,
    DataArguments,
    EpochShuffleSampler,
    ModelArguments,
    SemanticFPNTrainer,
    available_recipes,
    available_workers,
    build_model,
    build_processor,
    convert_to_sync_batch_norm,
    parse_arguments,
    resolve_checkpoint,
    run_training,
)
from fpn_seg.resume import TornCheckpointError, checkpoint_problems

# Cityscapes label ids that the synthetic scenes draw for evaluated classes (everything else, ego vehicle and static
# boxes, becomes 255): road, sidewalk, building, pole, vegetation, terrain, sky, person, car.
EVALUATED_LABEL_IDS = (7, 8, 11, 17, 21, 22, 23, 24, 26)
SIZE = (32, 64)
OTHER_SIZE = (40, 56)  # taller and narrower: processes hold maps that differ in both height and width
NUM_VAL = 5  # odd: two processes need a duplicated sample in the last batch
TINY_RECIPE = {
    "preset": "fpn_r50_512x1024_80k_cityscapes",
    "backbone_overrides": '{"depth": 18, "stem_channels": 8, "base_channels": 8}',
    "config_overrides": '{"neck_channels": 16, "head_channels": 16}',
    "dataset": "cityscapes",
    "crop_size": list(SIZE),
    "scale": [SIZE[1], SIZE[0]],
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 2,
    "learning_rate": 0.05,
    "weight_decay": "5e-4",  # YAML reads this as a string: the recipe reader converts it as a flag
    "lr_scheduler_type": "polynomial",
    "lr_scheduler_kwargs": {"lr_end": 0.0001, "power": 0.9},
    "max_grad_norm": 0.0,
    "max_steps": 40,
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 5,
    "dataloader_num_workers": 0,
    "report_to": [],
    "use_cpu": True,
    "disable_tqdm": True,
    "seed": 0,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def recipe(workdir) -> Path:
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


@pytest.fixture(scope="module")
def scenes(workdir) -> Path:
    return generate_street_scenes(workdir / "scenes", num_train=32, num_val=NUM_VAL, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def mixed_sizes(workdir, scenes) -> Path:
    """A `save_to_disk` dataset: the scenes' train split, and a validation split alternating two image sizes."""
    other = generate_street_scenes(workdir / "other_scenes", num_train=0, num_val=2, size=OTHER_SIZE, seed=1)
    ours = load_cityscapes(scenes, progress=False)
    theirs = load_cityscapes(other, splits=("val",), progress=False)["validation"]
    parts = [ours["validation"].select([0]), theirs.select([0]), ours["validation"].select([1]), theirs.select([1])]
    validation = concatenate_datasets([*parts, ours["validation"].select([2])])
    path = workdir / "mixed_sizes"
    DatasetDict(train=ours["train"], validation=validation).save_to_disk(str(path))
    return path


def counted_pixels(label_files: list[Path]) -> int:
    """Pixels whose Cityscapes label id is an evaluated class, counted straight from the label-id PNGs."""
    return sum(int(np.isin(np.asarray(PIL.Image.open(path)), EVALUATED_LABEL_IDS).sum()) for path in label_files)


def val_label_files(root: Path) -> list[Path]:
    return sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))


def confusion_matrix(output_dir: Path) -> np.ndarray:
    report = json.loads((output_dir / "eval_confusion_matrix.json").read_text())
    assert report["out_of_range_references"] == report["out_of_range_predictions"] == 0
    return np.array(report["confusion_matrix"], dtype=np.int64)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_train(recipe: Path, data_dir: Path, output_dir: Path, *flags: str) -> dict:
    return run_training(["--recipe", str(recipe), "--data_dir", str(data_dir), "--output_dir", str(output_dir), *flags])


# ------------------------------------------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def trained(workdir, recipe, scenes) -> tuple[Path, dict]:
    """40 steps of batch 8 on 32 scenes, evaluated on the 5 validation scenes at steps 0, 20 and 40."""
    output_dir = workdir / "trained"
    flags = ["--eval_strategy", "steps", "--eval_steps", "20", "--eval_on_start", "true"]
    return output_dir, run_train(recipe, scenes, output_dir, *flags)


def test_training_learns_well_above_chance(trained, scenes):
    output_dir, results = trained
    # Chance: the best constant prediction, scored on the same validation labels (classes renumbered 0..8).
    lookup = np.full(256, 255, dtype=np.int64)
    lookup[list(EVALUATED_LABEL_IDS)] = np.arange(len(EVALUATED_LABEL_IDS))
    references = [lookup[np.asarray(PIL.Image.open(path))] for path in val_label_files(scenes)]
    chance = max(
        mean_iou([np.full_like(ids, c) for ids in references], references, num_labels=9, ignore_index=255)["mean_iou"]
        for c in range(len(EVALUATED_LABEL_IDS))
    )
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evaluations = {entry["step"]: entry["eval_mean_iou"] for entry in state["log_history"] if "eval_mean_iou" in entry}
    assert sorted(evaluations) == [0, 20, 40]
    print(f"chance {chance:.3f}, mIoU by step {evaluations}")
    assert results["eval_mean_iou"] == pytest.approx(evaluations[40])
    assert results["eval_mean_iou"] > 3 * chance
    assert results["eval_mean_iou"] > 3 * evaluations[0]  # the untrained model
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert np.mean(losses[-2:]) < 0.75 * losses[0]


def test_training_outputs(trained, scenes):
    output_dir, results = trained
    # Every non-ignored validation pixel counted exactly once (5 scenes, eval batches of 2: the last holds one).
    matrix = confusion_matrix(output_dir)
    assert matrix.sum() == counted_pixels(val_label_files(scenes))
    assert np.trace(matrix) / matrix.sum() == pytest.approx(results["eval_overall_accuracy"])
    table = (output_dir / "eval_iou_table.txt").read_text()
    assert "| road" in table and "| mean" in table and "Acc" in table
    assert (output_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((output_dir / "eval_results.json").read_text())["eval_mean_iou"] == results["eval_mean_iou"]
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "preprocessor_config.json").is_file()
    assert json.loads((output_dir / "config.json").read_text())["neck_channels"] == 16
    # Arguments kept as JSON; nothing pickled in the model folder.
    assert json.loads((output_dir / "training_args.json").read_text())["output_dir"] == str(output_dir)
    assert not list(output_dir.glob("*.bin"))


def test_output_folder_holding_a_model_is_not_overwritten(trained, recipe, scenes):
    output_dir = trained[0]
    weights = (output_dir / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a model.*--overwrite_output_dir"):
        run_train(recipe, scenes, output_dir, "--max_steps", "1")
    assert (output_dir / "model.safetensors").read_bytes() == weights


def test_command_line_prints_user_errors_in_one_line(trained, recipe, scenes, tmp_path, capsys):
    from fpn_seg.cli import main as cli_main

    output_dir = trained[0]
    cases = [
        (["--output_dir", str(output_dir)], "already holds a model", "--overwrite_output_dir"),
        (["--output_dir", str(tmp_path / "new"), "--data_dir", str(tmp_path / "nowhere")], "nowhere", "does not exist"),
    ]
    for flags, fragment, remedy in cases:
        assert cli_main(["train", "--recipe", str(recipe), "--data_dir", str(scenes), *flags]) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("fpn-seg train: error: ") and fragment in stderr and remedy in stderr, stderr
        assert stderr.count("\n") == 1, stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / "new" / "model.safetensors").exists()


def test_empty_training_split_is_refused_before_training(workdir, recipe, scenes):
    with pytest.raises(ValueError, match=r"training split 'train' has no examples"):
        run_train(recipe, scenes, workdir / "empty", "--max_train_samples", "0")


# ------------------------------------------------------------------------------------------------ two processes


def test_torchrun_two_processes_count_like_one(workdir, recipe, trained, mixed_sizes, scenes):
    """2 DDP training steps on two gloo processes from the trained model, then evaluation on 5 images of two sizes
    (one per process at each step; a duplicated sample in the last batch); one process evaluating the saved model
    gives the same confusion matrix, which counts every pixel of the 5 labels once."""
    ddp_dir, single_dir = workdir / "ddp", workdir / "single"
    flags = ["--dataset", "folder", "--model_name_or_path", str(trained[0]), "--per_device_eval_batch_size", "1"]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fpn_seg.train",
        "--recipe", str(recipe), "--data_dir", str(mixed_sizes), "--output_dir", str(ddp_dir), *flags,
        "--max_steps", "2", "--ddp_backend", "gloo", "--plot", "false",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    # Two processes of batch 8 for 2 steps over 32 training images: one epoch (one process would make half).
    assert json.loads((ddp_dir / "train_results.json").read_text())["epoch"] == pytest.approx(1.0)

    flags[flags.index(str(trained[0]))] = str(ddp_dir)
    run_train(recipe, mixed_sizes, single_dir, *flags, "--eval_only", "true")
    two_processes, one_process = confusion_matrix(ddp_dir), confusion_matrix(single_dir)
    other_labels = val_label_files(workdir / "other_scenes")
    assert one_process.sum() == counted_pixels(val_label_files(scenes)[:3] + other_labels)
    np.testing.assert_array_equal(two_processes, one_process)
    assert (one_process > 0).sum() > 9  # not a constant prediction


# ------------------------------------------------------------------------------------------------ resume


# Runs `fpn_seg.train` and SIGKILLs it from inside the save of checkpoint-<step>, with trainer_state.json half written
# (the last file of a checkpoint; a kill there left the torn folder that once blocked `--resume_from_checkpoint last`).
KILL_INSIDE_SAVE = """
import os, signal, sys
from transformers import TrainerState
from fpn_seg.train import main

kill_at, save_to_json = int(sys.argv.pop(1)), TrainerState.save_to_json

def save_then_die(self, json_path):
    save_to_json(self, json_path)
    if self.global_step == kill_at and "checkpoint-" in json_path:  # as if killed half-way through the write
        with open(json_path, "r+") as file:
            file.truncate(len(file.read()) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

TrainerState.save_to_json = save_then_die
sys.exit(main())
"""
RESUME_FLAGS = ["--max_steps", "12", "--per_device_train_batch_size", "4", "--max_eval_samples", "1", "--plot", "false",
                "--save_strategy", "steps", "--save_steps", "3"]  # 8 steps per epoch: killed and resumed mid-epoch  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(workdir, recipe, scenes) -> Path:
    """12 steps saved every 3: whole checkpoints 3, 6, 9 and 12."""
    output_dir = workdir / "uninterrupted"
    run_train(recipe, scenes, output_dir, *RESUME_FLAGS)
    return output_dir


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_resume_after_sigkill_inside_a_save_gives_the_same_weights(augment_on, uninterrupted, workdir, recipe, scenes,
                                                                   monkeypatch, caplog):  # fmt: skip
    """The uninterrupted run augments in the workers; the killed and resumed runs augment in the workers, or on the
    training device (the CPU here, with one DataLoader worker that only decodes): the same weights either way."""
    killed_dir = workdir / f"killed_{augment_on}"
    flags = [*RESUME_FLAGS, "--augment_on", augment_on]
    if augment_on == "device":
        flags += ["--dataloader_num_workers", "1"]
    command = [sys.executable, "-c", KILL_INSIDE_SAVE, "6", "--recipe", str(recipe), "--data_dir", str(scenes)]
    completed = subprocess.run(
        [*command, "--output_dir", str(killed_dir), *flags],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )  # fmt: skip
    assert completed.returncode == -signal.SIGKILL, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert not (killed_dir / "model.safetensors").exists()  # killed before the end of training
    assert sorted(path.name for path in killed_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    torn_state = (killed_dir / "checkpoint-6" / "trainer_state.json").read_text()
    assert torn_state and not torn_state.rstrip().endswith("}")  # the state file was cut in the middle
    problems = checkpoint_problems(killed_dir / "checkpoint-6")
    assert len(problems) == 1 and problems[0].startswith("trainer_state.json is not valid JSON ("), problems
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint("last", killed_dir) == str(killed_dir / "checkpoint-3")
    assert "skipping torn checkpoint(s) checkpoint-6 (trainer_state.json is not valid JSON" in caplog.text

    # The Trainer must unpickle optimizer, scheduler and RNG states with weights_only=True.
    original_load, loads = torch.load, []

    def recording_load(*args, **kwargs):
        loads.append((Path(args[0]).name, kwargs.get("weights_only")))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    run_train(recipe, scenes, killed_dir, *flags, "--resume_from_checkpoint", "last")
    monkeypatch.undo()
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {name for name, _ in loads}
    assert all(weights_only is True for _, weights_only in loads), loads

    expected = load_file(uninterrupted / "model.safetensors")
    resumed = load_file(killed_dir / "model.safetensors")
    assert expected.keys() == resumed.keys()
    different = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert json.loads((killed_dir / "trainer_state.json").read_text())["global_step"] == 12
    assert checkpoint_problems(killed_dir / "checkpoint-6") == []  # saved again, whole, by the resumed run


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# How a save killed at different moments leaves checkpoint-6, and what `checkpoint_problems` says of it.
TORN = {
    "empty state": (lambda folder: (folder / "trainer_state.json").write_text(""), "trainer_state.json is empty"),
    "half-written state": (lambda folder: _truncate(folder / "trainer_state.json"), "trainer_state.json is not valid JSON"),
    "state without step": (lambda folder: (folder / "trainer_state.json").write_text("{}"), "trainer_state.json has no global_step"),
    "truncated weights": (lambda folder: _truncate(folder / "model.safetensors"), "model.safetensors is cut short ("),
    "weights cut in the header": (lambda folder: _truncate(folder / "model.safetensors", 0.0001), "model.safetensors is cut short ("),
    "empty weights": (lambda folder: _truncate(folder / "model.safetensors", 0), "model.safetensors is empty or cut short (0 bytes)"),
    "truncated optimizer": (lambda folder: _truncate(folder / "optimizer.pt"), "optimizer.pt is empty or cut short ("),
    "truncated RNG state": (lambda folder: _truncate(folder / "rng_state.pth", 0.9), "rng_state.pth is empty or cut short ("),
    "missing scheduler": (lambda folder: (folder / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "missing weights": (lambda folder: (folder / "model.safetensors").unlink(), "model.safetensors is missing"),
    "missing config": (lambda folder: (folder / "config.json").unlink(), "config.json is missing"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TORN))
def test_a_torn_checkpoint_is_skipped_by_last_and_refused_by_name(case, uninterrupted, tmp_path, caplog):
    for step in (3, 6):
        shutil.copytree(uninterrupted / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    assert checkpoint_problems(tmp_path / "checkpoint-6") == []
    tear, problem = TORN[case]
    tear(tmp_path / "checkpoint-6")
    files_before = sorted(tmp_path.rglob("*"))
    problems = checkpoint_problems(tmp_path / "checkpoint-6")
    assert len(problems) == 1 and problems[0].startswith(problem), problems

    with caplog.at_level("WARNING"):
        assert resolve_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-3")
    assert f"skipping torn checkpoint(s) checkpoint-6 ({problems[0]}); resuming from checkpoint-3" in caplog.text
    with pytest.raises(TornCheckpointError) as refused:
        resolve_checkpoint(str(tmp_path / "checkpoint-6"), tmp_path)
    message = str(refused.value)
    assert problems[0] in message and "Resume from an earlier checkpoint-<step> folder, or pass `last`" in message
    assert "\n" not in message
    assert sorted(tmp_path.rglob("*")) == files_before  # nothing deleted or changed


def test_resume_checkpoint_resolution(uninterrupted, tmp_path):
    assert resolve_checkpoint(None, tmp_path) is None
    assert resolve_checkpoint("false", tmp_path) is None
    with pytest.raises(FileNotFoundError, match=r"no whole checkpoint-<step> folder in .*; start without"):
        resolve_checkpoint("last", tmp_path)
    for step in (3, 9):
        shutil.copytree(uninterrupted / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-12").mkdir()  # killed before its first file
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: ignored
    assert resolve_checkpoint("latest", tmp_path) == str(tmp_path / "checkpoint-9")  # by step, not by name
    assert resolve_checkpoint(str(tmp_path / "checkpoint-3"), tmp_path) == str(tmp_path / "checkpoint-3")
    with pytest.raises(FileNotFoundError, match="checkpoint-8: no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "checkpoint-8"), tmp_path)
    for step in (3, 9):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no whole .* \(torn: checkpoint-12 \(trainer_state.json is missing"):
        resolve_checkpoint("last", tmp_path)


def test_command_line_refuses_a_torn_checkpoint_in_one_line(uninterrupted, recipe, scenes, tmp_path, capsys):
    from fpn_seg.cli import main as cli_main

    torn = tmp_path / "checkpoint-6"
    shutil.copytree(uninterrupted / "checkpoint-6", torn)
    _truncate(torn / "model.safetensors")
    flags = ["--recipe", str(recipe), "--data_dir", str(scenes), "--output_dir", str(tmp_path)]
    assert cli_main(["train", *flags, "--resume_from_checkpoint", str(torn)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"fpn-seg train: error: --resume_from_checkpoint {torn}: not a whole Trainer checkpoint")
    assert "model.safetensors is cut short" in stderr and "pass `last`" in stderr and stderr.count("\n") == 1


def test_augmentation_depends_only_on_seed_epoch_and_index(scenes, tmp_path):
    """What makes resumes exact: an example's crop is a function of (seed, epoch, index), not of RNG state, and the
    Trainer's dataloader follows `set_epoch`."""
    raw = load_cityscapes(scenes, splits=("train",), progress=False)["train"]
    processor = SemanticFPNImageProcessor(scale=(SIZE[1], SIZE[0]))
    transform = TrainTransform(processor, SIZE)
    dataset = AugmentedTrainDataset(raw, transform, seed=3)
    first = dataset[(0, 5)]  # the uint8 crop and its training ids (normalised and padded by the trainer's step)
    torch.manual_seed(1234)
    assert torch.equal(first.image, dataset[(0, 5)].image) and torch.equal(first.label, dataset[(0, 5)].label)
    assert not torch.equal(first.image, dataset[(1, 5)].image)

    sampler = EpochShuffleSampler(len(dataset), seed=3)
    orders = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {key[0] for key in keys} == {epoch} and sorted(key[1] for key in keys) == list(range(len(raw)))
        assert orders.setdefault(epoch, keys) == keys
    assert orders[0] != orders[1]

    model_args = ModelArguments(
        preset=TINY_RECIPE["preset"],
        backbone_overrides=TINY_RECIPE["backbone_overrides"],
        config_overrides=TINY_RECIPE["config_overrides"],
    )
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[])
    trainer = SemanticFPNTrainer(
        model=build_model(model_args), args=args, train_dataset=dataset, data_collator=collate_same_size
    )
    loader = trainer.get_train_dataloader()
    loader.set_epoch(1)  # as the Trainer does before each epoch
    batch = dataset.prepare_batch(next(iter(loader)))
    expected = [  # the public transform on the decoded examples
        transform.transform_example(
            image_to_tensor(raw[index]["image"]), raw_label_tensor(raw[index]["label"]),
            torch.Generator().manual_seed(mix_seed(3, epoch, index)),
        )  # fmt: skip
        for epoch, index in orders[1][:4]
    ]
    assert torch.equal(batch["pixel_values"], torch.stack([pixel_values for pixel_values, _ in expected]))
    assert torch.equal(batch["labels"], torch.stack([labels for _, labels in expected]))


# ------------------------------------------------------------------------------------------------ arguments


def test_a_model_needs_a_preset_or_a_saved_model():
    with pytest.raises(ValueError, match=r"Give --preset \(one of fpn_r50_512x1024_80k_cityscapes, .*\) or --model"):
        build_model(ModelArguments())


@pytest.mark.parametrize("language", ["yaml", "json"])
def test_recipe_values_and_command_line_overrides(language, tmp_path):
    recipe = tmp_path / f"tiny.{language}"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE) if language == "yaml" else json.dumps(TINY_RECIPE))
    model_args, data_args, recipe_args, training_args = parse_arguments(
        ["--recipe", str(recipe), "--learning_rate", "0.2", "--crop_size", "16", "24", "--output_dir", str(tmp_path)]
    )
    assert training_args.learning_rate == 0.2 and data_args.crop_size == [16, 24]  # flags beat the recipe
    assert training_args.per_device_train_batch_size == 8 and training_args.max_steps == 40  # recipe beats defaults
    assert training_args.weight_decay == 5e-4 and isinstance(training_args.weight_decay, float)
    assert training_args.lr_scheduler_kwargs == {"lr_end": 0.0001, "power": 0.9}
    assert model_args.preset == TINY_RECIPE["preset"] and recipe_args.momentum == 0.9
    # Set whatever the recipe says.
    assert training_args.remove_unused_columns is False and training_args.batch_eval_metrics is True
    assert training_args.label_names == ["labels"]


def test_recipe_with_an_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({**TINY_RECIPE, "learning_rat": 0.1, "max_step": 5}))
    with pytest.raises(ValueError, match=rf"Recipe {path} has unknown keys: learning_rat, max_step\."):
        parse_arguments(["--recipe", str(path)])
    path.write_text(yaml.safe_dump({**TINY_RECIPE, "learning_rate": "fast"}))
    with pytest.raises(ValueError, match=rf"Recipe {path}: learning_rate='fast' is not a valid value"):
        parse_arguments(["--recipe", str(path)])
    with pytest.raises(FileNotFoundError, match="neither a file nor a built-in recipe"):
        parse_arguments(["--recipe", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_builtin_recipes_follow_mmseg(name, tmp_path):
    """One recipe per seed config: SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9 down to 1e-4, iterations, total batch
    (4 processes), crop size."""
    assert name in available_recipes()
    preset = PRESETS[name]
    arguments = parse_arguments(["--recipe", name, "--output_dir", str(tmp_path)])
    model_args, data_args, recipe_args, training_args = arguments
    assert model_args.preset == name and data_args.dataset == preset.dataset
    assert tuple(data_args.crop_size) == preset.crop_size
    assert training_args.max_steps == preset.max_iters
    batch_per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    assert 4 * batch_per_step == preset.batch_size
    assert (training_args.learning_rate, recipe_args.momentum, training_args.weight_decay) == (0.01, 0.9, 5e-4)
    assert training_args.lr_scheduler_type == "polynomial" and training_args.warmup_steps == 0
    assert training_args.lr_scheduler_kwargs == {"lr_end": 0.0001, "power": 0.9}
    assert training_args.max_grad_norm == 0.0
    # Data loading for GPUs (tests/test_training_data.py checks the loader the Trainer builds from it).
    assert training_args.dataloader_num_workers == available_workers() and data_args.augment_on == "auto"
    assert training_args.dataloader_persistent_workers and training_args.dataloader_prefetch_factor == 2


def test_labels_outside_the_classes_stop_before_training(workdir, recipe, scenes, tmp_path):
    """Cityscapes label ids where the policy expects train ids: a clear error naming split and policy, no training."""
    images = sorted((scenes / "leftImg8bit" / "train").rglob("*.png"))
    labels = sorted((scenes / "gtFine" / "train").rglob("*_labelIds.png"))
    raw = Dataset.from_dict({"image": list(map(str, images)), "label": list(map(str, labels))})
    raw = raw.cast_column("image", Image()).cast_column("label", Image())
    DatasetDict(train=raw, validation=raw.select(range(2))).save_to_disk(str(tmp_path / "label_ids"))
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        run_train(recipe, tmp_path / "label_ids", output_dir, "--dataset", "folder")
    message = str(error.value)
    where = f"--dataset folder --data_dir {tmp_path / 'label_ids'}, split 'train'"
    assert f"{where}, example 0 of the first batch" in message
    assert "reduce_labels=False, no label_map, ignore_index=255, 19 classes" in message
    assert "outside the 19 class ids" in message and "label ids given where train ids are expected" in message
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_mixed_sizes_need_eval_batch_size_one(recipe, mixed_sizes, tmp_path):
    with pytest.raises(ValueError, match=r"split 'validation' has images of 2 sizes \(56x40, 64x32\).*batch_size 1"):
        run_train(recipe, mixed_sizes, tmp_path, "--dataset", "folder", "--per_device_eval_batch_size", "2")


def test_model_from_a_converted_imagenet_backbone(tmp_path):
    config = ResNetV1cConfig(depth=18, stem_channels=8, base_channels=8)
    weights = ResNetV1cBackbone(config).state_dict()
    for value in weights.values():
        if value.is_floating_point():
            value.normal_()
    torch.save(weights, tmp_path / "imagenet.pth")
    convert_imagenet_backbone(tmp_path / "imagenet.pth", tmp_path / "backbone", depth=18)

    args = ModelArguments(
        preset="fpn_r50_512x512_160k_ade20k",
        backbone_name_or_path=str(tmp_path / "backbone"),
        config_overrides='{"neck_channels": 16, "head_channels": 8}',
    )
    model = build_model(args)
    assert model.config.num_labels == 150 and model.config.reduce_labels and model.config.neck_channels == 16
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in weights.items())
    with pytest.raises(ValueError, match="JSON object"):
        build_model(ModelArguments(preset=args.preset, config_overrides="{neck: 16}"))
    with pytest.raises(ValueError, match="not both"):
        build_model(ModelArguments(model_name_or_path="x", backbone_name_or_path="y"))


def test_sync_bn_needs_cuda_processes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert convert_to_sync_batch_norm(model, world_size=1, device=torch.device("cpu")) is model
    with pytest.raises(ValueError, match="--sync_bn needs CUDA devices with NCCL"):
        convert_to_sync_batch_norm(model, world_size=2, device=torch.device("cpu"))
    converted = convert_to_sync_batch_norm(model, world_size=2, device=torch.device("cuda"))
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)


def test_sgd_decays_every_parameter_as_mmseg(tmp_path):
    """One SGD group at the arguments' learning rate and weight decay: biases and norms decay too (mmseg has no
    `paramwise_cfg` in sem_fpn); the trainer also takes `args` positionally, as `Trainer` does."""
    from fpn_seg import SemanticFPNForSemanticSegmentation

    model = SemanticFPNForSemanticSegmentation(tiny_config())
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=0.01, weight_decay=5e-4, report_to=[], use_cpu=True
    )
    optimizer = SemanticFPNTrainer(model, args, momentum=0.9).create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    decayed = [group for group in optimizer.param_groups if group["params"]]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == 5e-4 and decayed[0]["lr"] == 0.01
    assert decayed[0]["momentum"] == 0.9
    assert len(decayed[0]["params"]) == len(list(model.parameters()))


def test_a_saved_model_keeps_its_processor_and_takes_checked_overrides(tmp_path):
    """`--model_name_or_path`: the saved processor's test scale (not the default), the config's label policy, and
    `--config_overrides` validated like any config (ids as ints, label2id rebuilt, bad values refused)."""
    from fpn_seg import SemanticFPNForSemanticSegmentation

    config = tiny_config(num_labels=5)
    config.reduce_labels = True
    SemanticFPNForSemanticSegmentation(config).save_pretrained(tmp_path / "ade")
    SemanticFPNImageProcessor.from_model_config(config, scale=(2048, 512)).save_pretrained(tmp_path / "ade")
    model_args = ModelArguments(model_name_or_path=str(tmp_path / "ade"))
    processor = build_processor(model_args, DataArguments(), config)
    assert tuple(processor.scale) == (2048, 512) and processor.do_reduce_labels
    assert tuple(build_processor(model_args, DataArguments(scale=[1024, 256]), config).scale) == (1024, 256)

    overrides = '{"id2label": {"0": "sky", "1": "road", "2": "car"}}'
    model = build_model(ModelArguments(model_name_or_path=str(tmp_path / "ade"), config_overrides=overrides), True)
    assert model.config.id2label == {0: "sky", 1: "road", 2: "car"} and model.config.label2id["car"] == 2
    assert model.decode_head.classifier.out_channels == 3
    with pytest.raises(StrictDataclassError, match="ignore_index"):  # the config class validates (@strict)
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "ade"), config_overrides='{"ignore_index": 2}'))
    preset = preset_config("fpn_r50_512x1024_80k_cityscapes", id2label={0: "bg", 1: "fg"})
    assert preset.label2id == {"bg": 0, "fg": 1}
