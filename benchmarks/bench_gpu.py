"""Semantic FPN on a GPU, in one command: inference fps at the seed table's input sizes and one training step's peak
memory at its per-GPU batch and crop, beside mmsegmentation's V100 figures.

    python benchmarks/bench_gpu.py --output benchmarks/results/bench_gpu.json        # CUDA, all four models
    python benchmarks/bench_gpu.py --device cpu --tiny --iterations 2 --warmup 1      # a smoke run on the CPU

Inference: batch 1, whole image, `cudnn.benchmark` on (as mmseg's benchmark tool), `--warmup` calls then
`--iterations` timed calls between two synchronisations; fps = iterations / seconds. Cityscapes models run on
1024x2048 (the val images at the test scale (2048, 1024)), ADE20K models on 512x683 (a 4:3 val image resized to the
short side 512 of the test scale (2048, 512)). Variants: float32, float32 + channels_last, fp16 and bf16 autocast,
each also with channels_last, and the exact default of `fpn_seg.optimization.optimize_for_inference` (BatchNorm
folded + channels_last).

Training: one SGD step (lr 0.01, momentum 0.9, weight decay 5e-4, mmseg's loss), float32 and fp16 autocast, at the
seed's per-GPU batch: Cityscapes 2 x 512x1024, ADE20K 4 x 512x512; peak memory = `torch.cuda.max_memory_allocated()`
over the step after a warm-up step (mmseg logs the same counter). Random weights: speed and memory do not depend on
them. On the CPU there is no allocator counter: the memory column reads "-".
"""

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench_model import print_table
from fpn_seg import ResNetV1cConfig, SemanticFPNForSemanticSegmentation
from fpn_seg.optimization import optimize_for_inference
from fpn_seg.conversion import OFFICIAL_CHECKPOINTS
from fpn_seg.presets import PRESETS, get_preset, preset_config

# mmseg's sem_fpn table on V100s (OFFICIAL_CHECKPOINTS: inference fps, training memory in GB) was measured at these
# input sizes, and trained on 4 GPUs, each with a quarter of the preset's batch.
SEED_INPUT_SIZE = {"cityscapes": (1024, 2048), "ade20k": (512, 683)}
SEED_GPUS = 4
SEED = {
    name: {
        "fps": OFFICIAL_CHECKPOINTS[name].fps,
        "memory_gb": OFFICIAL_CHECKPOINTS[name].memory_gb,
        "size": SEED_INPUT_SIZE[preset.dataset],
        "crop": preset.crop_size,
        "batch": preset.batch_size // SEED_GPUS,
    }
    for name, preset in PRESETS.items()
}
# name -> (channels_last, autocast dtype or None, optimize_for_inference)
INFERENCE_VARIANTS = {
    "fp32": (False, None, False),
    "fp32+channels_last": (True, None, False),
    "fp16": (False, torch.float16, False),
    "fp16+channels_last": (True, torch.float16, False),
    "bf16": (False, torch.bfloat16, False),
    "bf16+channels_last": (True, torch.bfloat16, False),
    "exact default": (True, None, True),
}
TRAIN_VARIANTS = {"fp32": None, "fp16": torch.float16}


def build_model(preset: str, tiny: bool) -> SemanticFPNForSemanticSegmentation:
    """The preset's architecture with random weights; `tiny`: narrow widths (for a smoke run)."""
    torch.manual_seed(0)
    if not tiny:
        return SemanticFPNForSemanticSegmentation(preset_config(preset))
    backbone = ResNetV1cConfig(depth=get_preset(preset).depth, stem_channels=8, base_channels=8)
    return SemanticFPNForSemanticSegmentation(
        preset_config(preset, backbone_config=backbone, neck_channels=16, head_channels=8)
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class InferenceResult:
    model: str
    variant: str
    size: str
    fps: float
    seed_fps: float
    ratio_to_seed: float | None  # None for a --tiny smoke run (not the seed's model or input)
    seconds_per_image: float


def bench_inference(preset: str, model, device, args) -> list[InferenceResult]:
    height, width = (64, 128) if args.tiny else SEED[preset]["size"]
    results = []
    for variant in args.variants:
        channels_last, dtype, optimized = INFERENCE_VARIANTS[variant]
        if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        runner = optimize_for_inference(model) if optimized else model
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        runner = runner.to(device=device, memory_format=memory_format)
        pixel_values = torch.randn(1, 3, height, width, device=device).contiguous(memory_format=memory_format)
        with torch.inference_mode(), autocast(device, dtype):
            for _ in range(args.warmup):
                runner(pixel_values=pixel_values)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.iterations):
                runner(pixel_values=pixel_values)
            synchronize(device)
            seconds = (time.perf_counter() - start) / args.iterations
        seed_fps = SEED[preset]["fps"]
        ratio = None if args.tiny else (1 / seconds) / seed_fps
        results.append(InferenceResult(preset, variant, f"{height}x{width}", 1 / seconds, seed_fps, ratio, seconds))
        model.to(memory_format=torch.contiguous_format)
    return results


@dataclass
class TrainResult:
    model: str
    variant: str
    batch: int
    crop: str
    step_s: float
    peak_memory_gib: float | None
    seed_memory_gb: float


def bench_train(preset: str, model, device, args) -> list[TrainResult]:
    batch, (height, width) = SEED[preset]["batch"], SEED[preset]["crop"]
    if args.tiny:
        batch, height, width = 2, 64, 64
    results = []
    for variant in args.train_variants:
        dtype = TRAIN_VARIANTS[variant]
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        pixel_values = torch.randn(batch, 3, height, width, device=device)
        labels = torch.randint(0, model.config.num_labels, (batch, height, width), device=device)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16 and device.type == "cuda")

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = model(pixel_values=pixel_values, labels=labels).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        step()  # warm-up: creates the momenta and cuDNN's plans
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(max(1, args.train_steps)):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        results.append(TrainResult(preset, variant, batch, f"{height}x{width}", statistics.median(times), peak,
                                   SEED[preset]["memory_gb"]))  # fmt: skip
        del optimizer
        model.zero_grad(set_to_none=True)
        model.eval()
    return results


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a smoke run")
    parser.add_argument("--models", nargs="+", default=list(SEED), choices=list(SEED))
    parser.add_argument("--variants", nargs="+", default=list(INFERENCE_VARIANTS), choices=list(INFERENCE_VARIANTS))
    parser.add_argument("--train-variants", nargs="+", default=list(TRAIN_VARIANTS), choices=list(TRAIN_VARIANTS))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--tiny", action="store_true", help="narrow models and small inputs (a smoke run)")
    parser.add_argument("--output", help="write every figure as JSON to this path")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available (torch {torch.__version__}).")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "CPU"
    print(f"Device: {name}; torch {torch.__version__}" + (" (tiny models: a smoke run)" if args.tiny else ""))
    inference, training = [], []
    for preset in args.models:
        model = build_model(preset, args.tiny).eval()
        inference += bench_inference(preset, model, device, args)
        if not args.no_train:
            training += bench_train(preset, model, device, args)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows = [[r.model, r.variant, r.size, f"{r.fps:.2f}", f"{r.seed_fps:.2f}",
             "-" if r.ratio_to_seed is None else f"{r.ratio_to_seed:.2f}x"] for r in inference]  # fmt: skip
    print_table(f"Inference, batch 1 ({args.iterations} timed calls after {args.warmup})",
                ["model", "variant", "input", "fps", "V100 fps (mmseg)", "fps / V100"], rows)  # fmt: skip
    if training:
        rows = [[r.model, r.variant, f"{r.batch} x {r.crop}", f"{r.step_s:.3f}",
                 "-" if r.peak_memory_gib is None else f"{r.peak_memory_gib:.2f}", f"{r.seed_memory_gb:.1f}"]
                for r in training]  # fmt: skip
        print_table("One training step (SGD), per-GPU batch and crop",
                    ["model", "variant", "batch x crop", "step s", "peak GiB", "mmseg GB"], rows)  # fmt: skip
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        report = {"device": name, "torch": torch.__version__, "tiny": args.tiny,
                  "inference": [asdict(r) for r in inference], "training": [asdict(r) for r in training]}  # fmt: skip
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
