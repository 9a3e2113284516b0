"""The training data path of `fpn-seg train` (`AugmentedTrainDataset`, `SemanticFPNTrainer.training_step`): the
device path (workers decode, augmentation on the training device, here the CPU) gives the worker path's tensors bit
for bit; the loader the Trainer builds from the recipes; bad input on both paths (files named), in DataLoader workers
and in the main process; a worker that dies is reported with the files it was reading."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from conftest import tiny_config
from datasets import Dataset, Features, Image
from transformers import TrainingArguments

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor
from fpn_seg.data import TrainTransform, collate_same_size
from fpn_seg.data.image_ops import TorchImageOps
from fpn_seg.data.reading import TrainingDataError
from fpn_seg.data.synthetic import render_street_scene
from fpn_seg.train_arguments import available_workers, parse_arguments
from fpn_seg.trainer import AugmentedTrainDataset, SemanticFPNTrainer, collate_training_examples

# Image sizes (height, width): scenes larger and smaller than the crop, so that crops, cat_max_ratio retries and
# padding all happen.
SIZES = [(40, 56), (48, 64), (12, 16), (40, 56), (24, 40), (48, 64)]
CROP = (32, 48)
RAW_TO_CLASS = {7: 1, 8: 2, 11: 3, 21: 4, 23: 5, 26: 6}  # label ids of the scenes -> raw ADE-style values (0: other)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pairs(folder: Path, sizes=SIZES, jpeg: bool = False) -> list[tuple[str, str]]:
    """Street scenes as image files (PNG, or JPEG) and label PNGs with raw ADE20K-style values (0: other)."""
    folder.mkdir(parents=True, exist_ok=True)
    lookup = np.zeros(256, np.uint8)
    lookup[list(RAW_TO_CLASS)] = list(RAW_TO_CLASS.values())
    pairs = []
    for index, size in enumerate(sizes):
        image, label_ids = render_street_scene(np.random.default_rng(index), size)
        image_path = folder / f"scene_{index}.{'jpg' if jpeg else 'png'}"
        label_path = folder / f"scene_{index}_label.png"
        PIL.Image.fromarray(image).save(image_path)
        PIL.Image.fromarray(lookup[label_ids]).save(label_path)
        pairs.append((str(image_path), str(label_path)))
    return pairs


def dataset_of(pairs: list[tuple[str, str]]) -> Dataset:
    features = Features({"image": Image(), "label": Image()})
    return Dataset.from_dict({"image": [p[0] for p in pairs], "label": [p[1] for p in pairs]}, features=features)


PROCESSOR = SemanticFPNImageProcessor(scale=(56, 40), do_reduce_labels=True)


def batch_of(dataset: AugmentedTrainDataset, keys) -> dict:
    return dataset.prepare_batch(collate_training_examples([dataset[key] for key in keys]), "cpu")


@pytest.mark.parametrize("jpeg", [False, True], ids=["png", "jpeg"])
def test_device_path_gives_the_worker_path_tensors_bit_for_bit(jpeg, tmp_path):
    data = dataset_of(write_pairs(tmp_path, jpeg=jpeg))
    transform = TrainTransform(PROCESSOR, CROP)
    workers = AugmentedTrainDataset(data, transform, seed=7, augment_on="workers")
    device = AugmentedTrainDataset(data, transform, seed=7, augment_on="device")
    padded = 0
    for epoch in range(3):
        keys = [(epoch, index) for index in range(len(data))]
        expected, got = batch_of(workers, keys), batch_of(device, keys)
        assert expected["pixel_values"].shape == (len(data), 3, *CROP)
        assert expected["labels"].shape == (len(data), *CROP)
        assert torch.equal(expected["pixel_values"], got["pixel_values"])
        assert torch.equal(expected["labels"], got["labels"])
        padded += int((expected["labels"][:, -1, -1] == 255).sum())
        # The torch kernels on the CPU (the fallback without OpenCV) give the same bytes too.
        for key, pixels in zip(keys, expected["pixel_values"]):
            item = device[key]  # the decoded image and its plan, made in the worker
            crop = transform.apply_plan(item.image, item.plan, TorchImageOps)
            assert torch.equal(transform.finish(crop, item.label)[0], pixels)
    assert padded > 0  # some examples were smaller than the crop: padded after normalising, as on the worker path
    assert set(expected["labels"].unique().tolist()) <= set(range(6)) | {255}  # reduce_labels: raw v -> v - 1


def test_labels_given_as_arrays_take_the_same_path(tmp_path):
    """Label maps that are not 8-bit files (int64 arrays): the label policy is applied directly, not by lookup."""
    pairs = write_pairs(tmp_path, SIZES[:3])
    labels = [np.asarray(PIL.Image.open(label)).astype(np.int64) for _, label in pairs]
    data = Dataset.from_dict({"image": [image for image, _ in pairs], "label": labels}).cast_column("image", Image())
    transform = TrainTransform(PROCESSOR, CROP)
    keys = [(0, index) for index in range(len(data))]
    workers = batch_of(AugmentedTrainDataset(data, transform, 1, "workers"), keys)
    device = batch_of(AugmentedTrainDataset(data, transform, 1, "device"), keys)
    files = batch_of(AugmentedTrainDataset(dataset_of(pairs), transform, 1, "workers"), keys)
    for key in ("pixel_values", "labels"):
        assert torch.equal(workers[key], device[key]) and torch.equal(workers[key], files[key])


# ------------------------------------------------------------------------------------------------ loader settings


def test_recipes_give_the_trainer_a_gpu_loader(tmp_path, monkeypatch):
    """The built-in recipes: `dataloader_num_workers: auto` (cores less one, shared among local processes),
    persistent workers, pinned memory with non-blocking copies, prefetching; what `get_train_dataloader` builds."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert available_workers() == 11
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert available_workers() == 2
    _, data_args, _, args = parse_arguments(["--recipe", "fpn_r50_512x512_160k_ade20k", "--output_dir", str(tmp_path),
                                             "--eval_strategy", "no"])  # fmt: skip
    assert args.dataloader_num_workers == 2 and data_args.augment_on == "auto"
    dataset = AugmentedTrainDataset(dataset_of(write_pairs(tmp_path, SIZES[:2])), TrainTransform(PROCESSOR, CROP), 0)
    trainer = SemanticFPNTrainer(SemanticFPNForSemanticSegmentation(tiny_config()), args, train_dataset=dataset,
                                 data_collator=collate_same_size)  # fmt: skip
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers and loader.prefetch_factor == 2
    assert loader.pin_memory and trainer.accelerator.dataloader_config.non_blocking
    assert loader.collate_fn is collate_training_examples and trainer.data_collator is collate_same_size
    # A flag beats the recipe; without workers the worker settings are dropped, not refused.
    _, _, _, args = parse_arguments(["--recipe", "fpn_r50_512x512_160k_ade20k", "--output_dir", str(tmp_path),
                                     "--dataloader_num_workers", "0", "--use_cpu", "true"])  # fmt: skip
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_prefetch_factor) == (
        0, False, None
    )
    assert not args.dataloader_pin_memory and not args.accelerator_config.non_blocking  # transformers: CPU, no pinning
    _, _, _, args = parse_arguments(["--output_dir", str(tmp_path), "--dataloader_num_workers=auto"])
    assert args.dataloader_num_workers == 2


# ------------------------------------------------------------------------------------------------ bad input


def tiny_trainer(dataset: AugmentedTrainDataset, tmp_path: Path, workers: int) -> SemanticFPNTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2, use_cpu=True, report_to=[],
        dataloader_num_workers=workers, remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    return SemanticFPNTrainer(SemanticFPNForSemanticSegmentation(tiny_config(num_labels=6)), args,
                              train_dataset=dataset, data_collator=collate_same_size)  # fmt: skip


@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_unreadable_or_mismatched_files_name_the_file_on_both_paths(augment_on, tmp_path):
    pairs = write_pairs(tmp_path, SIZES[:4])
    PIL.Image.fromarray(np.zeros((10, 12), np.uint8)).save(pairs[1][1])  # a label map of another size
    data = AugmentedTrainDataset(dataset_of(pairs), TrainTransform(PROCESSOR, CROP), 0, augment_on)
    image = Path(pairs[3][0])
    image.write_bytes(image.read_bytes()[:500])  # cut short after the dataset was made: met mid-epoch
    with pytest.raises(TrainingDataError) as mismatch:
        data[(0, 1)]
    assert f"the label map {pairs[1][1]} is 12x10 but its image {pairs[1][0]} is 64x48" in str(mismatch.value)
    with pytest.raises(TrainingDataError, match=rf"training example 3: Cannot read image file '{image}' \(truncated"):
        data[(0, 3)]
    # In a DataLoader worker: the same one-line message in the main process, with the worker's number.
    with pytest.raises(TrainingDataError) as in_worker:
        tiny_trainer(data, tmp_path, workers=1).train()
    message = str(in_worker.value)
    assert "\n" not in message and "in DataLoader worker process 0" in message
    assert str(image) in message or pairs[1][1] in message, message


def test_fpn_seg_train_reports_a_corrupt_image_met_mid_epoch_in_one_line(tmp_path, capsys):
    from fpn_seg.cli import main as cli_main
    from fpn_seg.data import generate_street_scenes

    root = generate_street_scenes(tmp_path / "scenes", num_train=8, num_val=1, size=(32, 64), seed=0)
    corrupt = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[5]
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # the loader reads headers only: this is met while training
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "preset": "fpn_r50_512x1024_80k_cityscapes", "backbone_overrides": '{"depth": 18, "stem_channels": 8, '
        '"base_channels": 8}', "config_overrides": '{"neck_channels": 16, "head_channels": 16}', "crop_size": [32, 64],
        "scale": [64, 32], "per_device_train_batch_size": 4, "max_steps": 4, "eval_strategy": "no",
        "save_strategy": "no", "report_to": [], "use_cpu": True, "disable_tqdm": True, "dataloader_num_workers": 1,
        "plot": False,
    }))  # fmt: skip
    flags = ["--recipe", str(recipe), "--data_dir", str(root), "--output_dir", str(tmp_path / "out")]
    assert cli_main(["train", *flags, "--augment_on", "device"]) == 1
    stderr = capsys.readouterr().err  # the loaders' progress bars, then the error
    error = stderr.split("fpn-seg train: error: ", 1)[-1]
    assert error.startswith("training example ") and error.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"Cannot read image file '{corrupt}' (truncated or corrupt)" in error
    assert "in DataLoader worker process 0" in error


# Trains with one DataLoader worker that is SIGKILLed while it reads example 2 (as by the kernel's out-of-memory
# killer, or a decoder crashing on a file), and prints what the trainer raised. In its own process: torch reports dead
# workers from a SIGCHLD handler, which must not meet the test runner's other children.
DIE_WHILE_READING = """
import os, signal, sys
import torch
import fpn_seg.trainer
from test_training_data import CROP, PROCESSOR, dataset_of, tiny_trainer, write_pairs
from fpn_seg.data import TrainTransform
from fpn_seg.data.reading import TrainingDataError
from pathlib import Path

folder = Path(sys.argv[1])
pairs = write_pairs(folder, [(40, 56)] * 4)
read = fpn_seg.trainer.read_training_example

def read_and_die_on_example_2(example, index, *args):
    if index == 2 and torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(example, index, *args)

fpn_seg.trainer.read_training_example = read_and_die_on_example_2
data = fpn_seg.trainer.AugmentedTrainDataset(dataset_of(pairs), TrainTransform(PROCESSOR, CROP), 0, "device")
try:
    tiny_trainer(data, folder, workers=1).train()
except TrainingDataError as error:
    print("RAISED", str(error))
    print("FILES", pairs[2][0], pairs[2][1])
"""


def test_a_worker_that_dies_is_reported_with_the_files_it_was_reading(tmp_path):
    """torch only says that a worker exited; the trainer names the files it was reading."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-c", DIE_WHILE_READING, str(tmp_path)], capture_output=True,
                               text=True, timeout=300, env=env)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in completed.stdout.splitlines() if line.startswith(("RAISED", "FILES")))
    message, files = lines["RAISED"], lines["FILES"].split(" ")
    assert message.startswith("a DataLoader worker died (DataLoader worker (pid") and "\n" not in message
    assert f"was reading {files[0]} + {files[1]}" in message and "out of memory" in message
