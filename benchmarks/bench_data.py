"""Benchmark: the training data pipeline of `fpn-seg train`, against a cv2 implementation of mmseg's.

Part 1 (any machine): the cost of one training sample on one CPU core (`torch.set_num_threads(1)`, OpenCV threads
off, as in a DataLoader worker), process CPU time, paths interleaved sample by sample, medians:

- **worker path**: what a DataLoader worker of `fpn-seg train` does with `augment_on=workers` (read the files, random
  resize, crop with `cat_max_ratio`, flip, photometric distortion; OpenCV's kernels when installed);
- **TrainTransform**: the public `with_transform` transform: the same, plus normalisation and padding (float32);
- **device path's worker share**: what a worker does with `augment_on=device` (read and decode the files, make
  every random draw and decision and crop the label map: `TrainTransform.plan_example`);
- **mmseg (cv2)**: mmseg 1.x's training pipeline written here with cv2 / numpy from its documented semantics
  (`LoadImageFromFile` with cv2, `LoadAnnotations` with Pillow, `RandomResize`, `RandomCrop(cat_max_ratio=0.75)`,
  `RandomFlip`, `PhotoMetricDistortion` with cv2's HSV, `PackSegInputs`): the per-sample work of mmseg's workers
  (mmseg normalises and pads on the GPU, in its data preprocessor).

Inputs are synthetic street scenes (`fpn_seg.data.synthetic`) written as real files: Cityscapes size (1024x2048 PNG
image and label-id PNG, read through `load_cityscapes`, recipe `fpn_r50_512x1024_80k_cityscapes`) and ADE20K size
(512x683 JPEG image and PNG label with ADE20K's raw values, `reduce_labels`, recipe `fpn_r50_512x512_160k_ade20k`).

Part 2 (`--device cuda`): end-to-end training steps per second of the real `fpn-seg train` machinery
(`parse_arguments` on the recipe, `build_model`, `load_training_data`, `AugmentedTrainDataset`,
`SemanticFPNTrainer` with the recipe's loader: persistent pinned workers, non-blocking copies) for
`--augment_on workers` and `device`, against the pure step rate of the same Trainer fed one pre-made batch already
on the device. R-50 Cityscapes preset, fp32, batch 2 of 512x1024 crops, `--workers` DataLoader workers, on
`--scenes` synthetic 1024x2048 scenes; steps timed by a callback after `--warmup-steps`.

    python benchmarks/bench_data.py --output benchmarks/results/bench_data.json              # CPU tables
    python benchmarks/bench_data.py --device cuda --output benchmarks/results/bench_data_gpu.json
    python benchmarks/bench_data.py --device cpu --quick --output /tmp/bench_data.json       # smoke run (tests)
"""

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import yaml
from datasets import Dataset, Image, concatenate_datasets

from fpn_seg.data import TrainTransform, load_cityscapes
from fpn_seg.data.image_ops import opencv_hsv_matches
from fpn_seg.optional_opencv import load_opencv
from fpn_seg.data.reading import read_training_example, storage_columns
from fpn_seg.data.synthetic import render_street_scene
from fpn_seg.data.transforms import keep_ratio_size, mix_seed
from fpn_seg.presets import preset_processor
from fpn_seg.trainer import AugmentedTrainDataset

CITYSCAPES_RECIPE = "fpn_r50_512x1024_80k_cityscapes"
ADE20K_RECIPE = "fpn_r50_512x512_160k_ade20k"
# Cityscapes label id -> train id of the classes the synthetic scenes draw (the others are 255).
SYNTHETIC_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 22: 9, 23: 10, 24: 11, 26: 13}


# ------------------------------------------------------------------------------------------------ data


def _render(job: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, height, width = job
    return render_street_scene(np.random.default_rng([seed, height, width]), (height, width))


def render_scenes(count: int, size: tuple[int, int], processes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    jobs = [(index, *size) for index in range(count)]
    if processes <= 1 or count <= 1:
        return [_render(job) for job in jobs]
    with ProcessPoolExecutor(min(processes, count)) as pool:
        return list(pool.map(_render, jobs))


def write_cityscapes(root: Path, scenes: list, num_val: int = 1) -> Path:
    """The scenes in the Cityscapes layout (PNG, Pillow's default compression); the last `num_val` are `val`."""
    for index, (image, label_ids) in enumerate(scenes):
        split = "val" if index >= len(scenes) - num_val else "train"
        stem = f"bench_{index:06d}_000019"
        for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", label_ids)):
            path = root / folder / split / "bench" / f"{stem}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(array).save(path)
    return root


def write_ade20k(root: Path, scenes: list) -> Dataset:
    """ADE20K-like pairs: JPEG images (quality 90) and PNG labels with raw values (0: other, class c: c + 1)."""
    lookup = np.zeros(256, np.uint8)
    for label_id, train_id in SYNTHETIC_TRAIN_IDS.items():
        lookup[label_id] = train_id + 1
    images, labels = [], []
    root.mkdir(parents=True, exist_ok=True)
    for index, (image, label_ids) in enumerate(scenes):
        images.append(str(root / f"ADE_train_{index:08d}.jpg"))
        labels.append(str(root / f"ADE_train_{index:08d}.png"))
        PIL.Image.fromarray(image).save(images[-1], quality=90)
        PIL.Image.fromarray(lookup[label_ids]).save(labels[-1])
    return Dataset.from_dict({"image": images, "label": labels}).cast_column("image", Image()).cast_column(
        "label", Image()
    )


# ------------------------------------------------------------------------------------------------ mmseg baseline


def mmseg_pipeline(image_bytes: bytes, label_bytes: bytes, rng: np.random.Generator, scale, crop_size,
                   reduce_zero_label: bool, cat_max_ratio: float = 0.75, ignore_index: int = 255):  # fmt: skip
    """mmseg 1.x's `sem_fpn` training pipeline on one example, written from its documented semantics with cv2 / numpy
    (the per-sample work of mmseg's DataLoader workers): -> uint8 (3, h, w) BGR tensor, int64 (1, h, w) labels."""
    cv2 = load_opencv()
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)  # LoadImageFromFile (BGR)
    seg = np.array(PIL.Image.open(io.BytesIO(label_bytes))).astype(np.uint8)  # LoadAnnotations (pillow)
    if reduce_zero_label:
        seg[seg == 0] = 255
        seg = seg - 1
        seg[seg == 254] = 255
    ratio = rng.uniform(0.5, 2.0)  # RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)
    height, width = keep_ratio_size(*image.shape[:2], (int(scale[0] * ratio), int(scale[1] * ratio)))
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(seg, (width, height), interpolation=cv2.INTER_NEAREST)
    margin_h, margin_w = max(height - crop_size[0], 0), max(width - crop_size[1], 0)  # RandomCrop

    def crop_bbox():
        top, left = rng.integers(0, margin_h + 1), rng.integers(0, margin_w + 1)
        return top, top + crop_size[0], left, left + crop_size[1]

    box = crop_bbox()
    for _ in range(10):
        values, counts = np.unique(seg[box[0] : box[1], box[2] : box[3]], return_counts=True)
        counts = counts[values != ignore_index]
        if len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio:
            break
        box = crop_bbox()
    image, seg = image[box[0] : box[1], box[2] : box[3]], seg[box[0] : box[1], box[2] : box[3]]
    if rng.random() < 0.5:  # RandomFlip(prob=0.5)
        image, seg = np.flip(image, axis=1), np.flip(seg, axis=1)

    def convert(values, alpha=1.0, beta=0.0):
        return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):  # PhotoMetricDistortion
        image = convert(image, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-18, 18)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):
        image = convert(image, alpha=rng.uniform(0.5, 1.5))
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # PackSegInputs
    return pixels, torch.from_numpy(seg[None].astype(np.int64))


def _storage_bytes(value: dict) -> bytes:
    return value["bytes"] if value.get("bytes") else Path(value["path"]).read_bytes()


# ------------------------------------------------------------------------------------------------ part 1: CPU


def cpu_costs(name: str, dataset: Dataset, recipe: str, processor, rounds: int) -> dict:
    """Per-sample CPU time of each path on `dataset` (one core), interleaved sample by sample; medians in ms."""
    crop_size = tuple(yaml.safe_load((Path(__file__).parents[1] / "src/fpn_seg/recipes" / f"{recipe}.yaml")
                          .read_text())["crop_size"])  # fmt: skip
    transform = TrainTransform(processor, crop_size)
    workers_path = AugmentedTrainDataset(dataset, transform, seed=0, augment_on="workers")
    decode_path = AugmentedTrainDataset(dataset, transform, seed=0, augment_on="device")
    storage = storage_columns(dataset, ["image", "label"])
    reduce = bool(processor.do_reduce_labels)

    def transform_sample(key):
        image, labels, _ = read_training_example(workers_path.dataset[key[1]], key[1], "image", "label", processor)
        return transform.transform_example(image, labels, torch.Generator().manual_seed(mix_seed(0, *key)))

    def mmseg_sample(key):
        example = storage[key[1]]
        rng = np.random.default_rng(mix_seed(0, *key))
        return mmseg_pipeline(_storage_bytes(example["image"]), _storage_bytes(example["label"]), rng,
                              processor.scale, crop_size, reduce)  # fmt: skip

    paths = {
        "worker path": lambda key: workers_path[key],
        "TrainTransform (+ normalise, pad)": transform_sample,
        "device path's worker share": lambda key: decode_path[key],
        "mmseg (cv2)": mmseg_sample,
    }
    times = {path: [] for path in paths}
    for key in [(epoch, index) for epoch in range(rounds + 1) for index in range(len(dataset))]:
        for path, run in paths.items():
            start = time.process_time()
            run(key)
            if key[0] > 0:  # the first epoch warms up
                times[path].append(time.process_time() - start)
    medians = {path: 1000 * statistics.median(values) for path, values in times.items()}
    baseline = medians["mmseg (cv2)"]
    rows = [
        {"inputs": name, "path": path, "ms_per_sample": round(value, 2), "ratio_to_mmseg": round(value / baseline, 3),
         "samples": len(times[path])}
        for path, value in medians.items()
    ]  # fmt: skip
    for row in rows:
        print(f"  {name:<28} {row['path']:<36} {row['ms_per_sample']:8.1f} ms   {row['ratio_to_mmseg']:.3f}x mmseg")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------------ part 2: GPU


def training_rates(root: Path, args, device: str) -> list[dict]:
    """Steps/s of `fpn-seg train`'s Trainer (both augmentation paths) and of the pure step on a pre-made batch."""
    args_ = args
    from transformers import TrainerCallback

    from fpn_seg.data import collate_same_size
    from fpn_seg.train import build_model, build_processor, load_training_data
    from fpn_seg.train_arguments import parse_arguments
    from fpn_seg.trainer import SemanticFPNTrainer, collate_training_examples

    class StepClock(TrainerCallback):
        """The time at the end of the warm-up steps and of the last step, each after a device synchronisation (no
        synchronisation in between: the CPU runs ahead as in a real run)."""

        def __init__(self):
            self.times, self.steps = [], 0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (args_.warmup_steps, state.max_steps):
                if device == "cuda":
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())
            self.steps = state.global_step

    def arguments(output_dir: Path, augment_on: str):
        flags = ["--recipe", CITYSCAPES_RECIPE, "--data_dir", str(root), "--output_dir", str(output_dir),
                 "--max_steps", str(args.warmup_steps + args.steps), "--per_device_train_batch_size", "2",
                 "--dataloader_num_workers", str(args.workers), "--augment_on", augment_on, "--eval_strategy", "no",
                 "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1000000", "--disable_tqdm", "true"]
        if args.tiny:
            flags += ["--backbone_overrides", '{"depth": 18, "stem_channels": 8, "base_channels": 8}',
                      "--config_overrides", '{"neck_channels": 16, "head_channels": 16}',
                      "--crop_size", "64", "128", "--scale", "256", "128"]
        if device == "cpu":
            flags += ["--use_cpu", "true"]
        return parse_arguments(flags)  # fmt: skip

    def rate(clock: StepClock) -> float:
        return args.steps / (clock.times[-1] - clock.times[0])

    results: list[dict] = []
    model_args, data_args, _, training_args = arguments(Path(args.workdir) / "run", "workers")
    model = build_model(model_args)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    processor = build_processor(model_args, data_args, model.config)
    train_split = load_training_data(data_args, [data_args.train_split])[data_args.train_split]
    # Every timed step inside one epoch: the scenes listed as often as needed (each example is still read, decoded
    # and augmented, with its own draws). With few examples per epoch, the DataLoader's pipeline drains and refills
    # at every epoch boundary, a stall that a real dataset (Cityscapes: 1488 steps of 2 per epoch) hardly sees.
    examples = 2 * (args.warmup_steps + args.steps) if args.one_epoch else len(train_split)
    train_split = concatenate_datasets([train_split] * -(-examples // len(train_split)))
    crop_size = tuple(data_args.crop_size)
    # The two paths on this device: the same tensors for the same keys (the tests check it on the CPU).
    transform = TrainTransform(processor, crop_size)
    keys = [(0, index) for index in range(min(4, len(train_split)))]
    batches = [
        dataset.prepare_batch(collate_training_examples([dataset[key] for key in keys]), training_args.device)
        for dataset in (AugmentedTrainDataset(train_split, transform, 0, path) for path in ("workers", "device"))
    ]
    same = all(torch.equal(batches[0][key], batches[1][key]) for key in ("pixel_values", "labels"))
    results.append({"run": "device path == worker path (bit for bit, 4 examples)", "equal": same})
    print(f"  device path gives the worker path's tensors on {training_args.device}: {same}")
    for augment_on in ("workers", "device"):
        model.load_state_dict(initial)
        model_args, data_args, _, training_args = arguments(Path(args.workdir) / augment_on, augment_on)
        dataset = AugmentedTrainDataset(train_split, TrainTransform(processor, crop_size), 0, augment_on=augment_on)
        clock = StepClock()
        trainer = SemanticFPNTrainer(model=model, args=training_args, train_dataset=dataset,
                                     data_collator=collate_same_size, callbacks=[clock])  # fmt: skip
        loader = {
            "num_workers": training_args.dataloader_num_workers,
            "persistent_workers": training_args.dataloader_persistent_workers,
            "pin_memory": training_args.dataloader_pin_memory,
            "prefetch_factor": training_args.dataloader_prefetch_factor,
        }
        start = time.perf_counter()
        trainer.train()
        results.append({"run": f"fpn-seg train, augment_on={augment_on}", "steps_per_s": rate(clock),
                        "wall_s": time.perf_counter() - start, "timed_steps": args.steps,
                        "examples_per_epoch": len(train_split), **loader})  # fmt: skip
        print(f"  augment_on={augment_on:<8} {results[-1]['steps_per_s']:7.2f} steps/s")
    # The pure step: the same Trainer fed one batch made in advance, already on the device.
    model.load_state_dict(initial)
    _, _, _, training_args = arguments(Path(args.workdir) / "pure", "workers")
    training_args.dataloader_num_workers, training_args.dataloader_pin_memory = 0, False
    training_args.dataloader_persistent_workers, training_args.dataloader_prefetch_factor = False, None
    example = AugmentedTrainDataset(train_split, TrainTransform(processor, crop_size), 0, "workers")
    batch = example.prepare_batch(
        {"images": [example[(0, i)].image for i in range(2)], "label_maps": [example[(0, i)].label for i in range(2)],
         "keys": [(0, 0), (0, 1)], "plans": [None, None]},
        training_args.device,
    )  # fmt: skip
    clock = StepClock()
    steps = args.warmup_steps + args.steps
    premade = _PremadeBatches(batch, steps * 2)
    trainer = SemanticFPNTrainer(model=model, args=training_args, train_dataset=premade,
                                 data_collator=premade.collate, callbacks=[clock])  # fmt: skip
    trainer.train()
    results.append({"run": "pure step (pre-made device batch)", "steps_per_s": rate(clock), "timed_steps": args.steps})
    print(f"  pure step          {results[-1]['steps_per_s']:7.2f} steps/s")
    pure = results[-1]["steps_per_s"]
    for row in results:
        if "steps_per_s" in row:
            row["fraction_of_pure"] = round(row["steps_per_s"] / pure, 3)
    return results


class _PremadeBatches(torch.utils.data.Dataset):
    """`length` items that collate to the same pre-made device batch (the pure step rate's input)."""

    def __init__(self, batch: dict, length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, items: list) -> dict:
        return dict(self.batch)


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small images, tiny model, few steps (smoke run)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="timed epochs over the CPU samples (default 3)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--epoch-boundaries", dest="one_epoch", action="store_false",
                        help="one epoch = the --scenes examples (default: the scenes repeated so that the timed steps "
                        "fall in one epoch)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--skip-cpu", action="store_true", help="only the training rates")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    args.tiny = args.quick
    if args.quick:
        args.rounds = args.rounds or 1
        args.scenes, args.steps, args.warmup_steps, args.workers = 6, 4, 2, min(args.workers, 2)
    torch.set_num_threads(1)
    cv2 = load_opencv()
    if cv2 is None:
        sys.exit("bench_data.py needs OpenCV for its mmseg baseline: pip install 'fpn_seg[opencv]'.")
    cv2.setNumThreads(0)
    workdir = tempfile.TemporaryDirectory(prefix="bench_data_")
    args.workdir = args.workdir or workdir.name
    root = Path(args.workdir)
    processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    city_size, ade_size = ((128, 256), (64, 86)) if args.quick else ((1024, 2048), (512, 683))
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "CPU",
        "torch": torch.__version__, "opencv": cv2.__version__, "opencv_hsv_exact": opencv_hsv_matches(),
        "python": platform.python_version(), "quick": args.quick, "cpu": [], "training": [],
    }  # fmt: skip
    if not args.skip_cpu:
        started = time.perf_counter()
        print(f"Rendering scenes ({processes} processes) ...", flush=True)
        count = 2 if args.quick else 4
        city_root = write_cityscapes(root / "cityscapes_cpu", render_scenes(count + 1, city_size, processes))
        city = load_cityscapes(city_root, splits=("train",), progress=False)["train"]
        ade = write_ade20k(root / "ade20k", render_scenes(2 if args.quick else 8, ade_size, processes))
        print(f"  {time.perf_counter() - started:.0f} s. One training sample on one core (CPU time):", flush=True)
        rounds = args.rounds or 3
        city_processor = preset_processor(CITYSCAPES_RECIPE)
        ade_processor = preset_processor(ADE20K_RECIPE)
        if args.quick:
            city_processor.scale, ade_processor.scale = [256, 128], [86, 64]
        for name, dataset, recipe, processor in (
            (f"Cityscapes {city_size[0]}x{city_size[1]} PNG", city, CITYSCAPES_RECIPE, city_processor),
            (f"ADE20K {ade_size[0]}x{ade_size[1]} JPEG", ade, ADE20K_RECIPE, ade_processor),
        ):
            report["cpu"] += cpu_costs(name, dataset, recipe, processor, rounds)["rows"]
    if args.device == "cuda" or args.quick:
        started = time.perf_counter()
        print(f"Rendering {args.scenes} scenes for the training runs ...", flush=True)
        train_root = write_cityscapes(root / "cityscapes_train", render_scenes(args.scenes + 1, city_size, processes))
        print(f"  {time.perf_counter() - started:.0f} s. Training steps per second:", flush=True)
        torch.set_num_threads(max(1, processes // 2))
        report["training"] = training_rates(train_root, args, args.device)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        print(f"Wrote {args.output}")
    workdir.cleanup()
    return report


if __name__ == "__main__":
    main()
