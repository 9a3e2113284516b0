"""Semantic FPN on a GPU, in one command: latency of every inference path (with the profiler's kernel time beside the
wall time), `fpn-seg predict`'s images per second, fp16 / bf16 agreement on a trained model, one training step's peak
memory, and predict against the plain public-API loop on the CPU.

    python benchmarks/bench_gpu.py --output benchmarks/results/bench_gpu.json     # CUDA: ~3-4 min on an H200
    python benchmarks/bench_gpu.py --device cpu --quick                            # smoke run on the CPU (tests)

Sections (`--sections`; each one's figures are written to `--output` as soon as it ends, and an error in one
section is printed and recorded without stopping the others; compile runs last):

- **latency**: R-50 at ADE20K's 512x683 and Cityscapes' 1024x2048, batch 1, random weights (random BatchNorm
  statistics). Paths: `eager` (the model as loaded), `folded` (`optimize_for_inference`: BatchNorm folded,
  channels_last), `eager graph` / `folded graph` (CUDA graph replay through `fpn_seg.cuda_graphs.CUDAGraphRunner`,
  copy-in and copy-out included: what `SemanticSegmenter` runs), `folded fp16 graph` / `folded bf16 graph` (the same
  under autocast, `precision="fp16"` / `"bf16"`), and `compile fp16` (`torch.compile(mode="reduce-overhead")` of the
  folded model under fp16 autocast; its compile time is the first 3 calls). Wall time: median of `--iterations`
  calls, each synchronised, after `--warmup` calls. Kernels and kernel time: `torch.profiler` (CUDA activity) over
  one call. `exact` says whether the fp32 graph replay gave the eager path's logits bit for bit.
- **predict**: `fpn-seg predict`'s own loop (`fpn_seg.predict.predict_images`: decoding threads, batches on the
  device, writer threads) over a folder of 1024x2048 PNGs (synthetic scenes with sensor noise, saved at Pillow's
  default compression like Cityscapes' files) with the R-50 Cityscapes model, after a warm-up run; images per
  second with label PNGs and overlays; beside it the plain public-API loop on the same device.
- **agreement**: on a trained model folder (`--agreement-model`, default `demo_output/model` of `make demo`, with
  `--agreement-images`, default its held-out scenes): the share of pixels whose fp16 / bf16 label equals the fp32
  label, and whether CUDA graphs change any label.
- **training**: one SGD step of each seed model at its per-GPU batch and crop, float32 and fp16 autocast; peak
  memory = `torch.cuda.max_memory_allocated()` (mmseg's memory column).
- **cpu-predict**: on the CPU, `fpn-seg predict`'s loop against the plain public-API loop (processor, model,
  `post_process_semantic_segmentation`, PIL saves of the label map and of an `Image.blend` overlay) on 1024x2048
  scenes with a small model (the demo's ResNetV1c-18 width 16), alternating, `--cpu-rounds` rounds; time per image.
"""

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_model import print_table
from fpn_seg import ResNetV1cConfig, SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, SemanticSegmenter
from fpn_seg.conversion import OFFICIAL_CHECKPOINTS
from fpn_seg.image_files import collect_image_inputs, make_stems_distinct
from fpn_seg.optimization import optimize_for_inference
from fpn_seg.predict import parse_arguments, predict_images
from fpn_seg.prepared_model import PreparedModel
from fpn_seg.presets import PRESETS, get_preset, preset_config
from fpn_seg.visualize import palette_for

SEED_INPUT_SIZE = {"cityscapes": (1024, 2048), "ade20k": (512, 683)}
SEED_GPUS = 4  # mmseg trained on 4 GPUs, each with a quarter of the preset's batch
SEED = {
    name: {"fps": OFFICIAL_CHECKPOINTS[name].fps, "memory_gb": OFFICIAL_CHECKPOINTS[name].memory_gb,
           "size": SEED_INPUT_SIZE[preset.dataset], "crop": preset.crop_size, "batch": preset.batch_size // SEED_GPUS}
    for name, preset in PRESETS.items()
}  # fmt: skip
LATENCY_MODELS = ("fpn_r50_512x512_160k_ade20k", "fpn_r50_512x1024_80k_cityscapes")
GOALS_MS = {"fpn_r50_512x512_160k_ade20k": 3.0, "fpn_r50_512x1024_80k_cityscapes": 6.5}  # issue 21, H200-class
PREDICT_GOAL = 50.0  # images per second, 1024x2048, H200-class
PATHS = ("eager", "folded", "eager graph", "folded graph", "folded fp16 graph", "folded bf16 graph", "compile fp16")
TRAIN_VARIANTS = {"fp32": None, "fp16": torch.float16}
SECTIONS = ("latency", "predict", "agreement", "training", "cpu-predict")
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that folding is not a no-op (speed does not depend on the values)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def build_model(preset: str, quick: bool, depth: int | None = None, width: int | None = None):
    """The preset's architecture with random weights; `quick` / `width`: narrow (a smoke run, a small model)."""
    torch.manual_seed(0)
    if not quick and width is None:
        return random_batch_norms(SemanticFPNForSemanticSegmentation(preset_config(preset)))
    width = width or 8
    backbone = ResNetV1cConfig(depth=depth or get_preset(preset).depth, stem_channels=width, base_channels=width)
    config = preset_config(preset, backbone_config=backbone, neck_channels=2 * width, head_channels=2 * width)
    return random_batch_norms(SemanticFPNForSemanticSegmentation(config))


# ------------------------------------------------------------------------------------------------ latency


@dataclass
class LatencyResult:
    model: str
    path: str
    size: str
    wall_ms: float | None = None
    kernel_ms: float | None = None  # GPU time in the profiled call's kernels (and copies)
    kernels: int | None = None
    setup_s: float | None = None  # compile fp16: the first 3 calls (compilation and graph recording)
    exact: bool | None = None  # fp32 paths: logits equal to the eager path of the same model bit for bit
    fps: float | None = None
    seed_fps: float | None = None
    note: str = ""


def path_runner(path: str, model, folded, device, cache: dict):
    """(a function pixel_values -> logits running `path`, setup seconds) or (None, reason)."""
    if path == "eager":
        return (lambda pixel_values: model(pixel_values=pixel_values).logits), 0.0
    if path == "folded":
        return (lambda pixel_values: folded(pixel_values=pixel_values).logits), 0.0
    if "graph" in path and device.type != "cuda":
        return None, "CUDA graphs need a GPU"
    if path == "eager graph":
        prepared = PreparedModel(model, optimize=False, cuda_graphs=True)
        return (lambda pixel_values: prepared.logits(pixel_values)), 0.0
    if path.startswith("folded") and path.endswith("graph"):
        precision = {"folded graph": "fp32", "folded fp16 graph": "fp16", "folded bf16 graph": "bf16"}[path]
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return None, "no bf16 on this GPU"
        if "prepared" not in cache:  # one graph cache per precision, on the folded copy
            cache["prepared"] = PreparedModel(folded, cuda_graphs=True)
        prepared = cache["prepared"]
        return (lambda pixel_values: prepared.logits(pixel_values, precision)), 0.0
    if path == "compile fp16":
        compiled = torch.compile(folded, mode="reduce-overhead")

        def run(pixel_values):
            torch.compiler.cudagraph_mark_step_begin()  # each call a new inference step (outputs are not kept)
            with torch.autocast(device.type, dtype=torch.float16):
                return compiled(pixel_values=pixel_values).logits.float()

        return run, 0.0
    raise ValueError(path)


def profile_call(run, pixel_values, device) -> tuple[float | None, int | None]:
    """(GPU milliseconds in kernels and copies, their number) of one call, from torch.profiler's CUDA activity."""
    if device.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        run(pixel_values)
        synchronize(device)
    device_events = [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    return sum(event.time_range.elapsed_us() for event in device_events) / 1000, len(device_events)


def bench_latency(args, device, paths) -> list[LatencyResult]:
    results = []
    for preset in args.models:
        height, width = (64, 86) if args.quick else SEED[preset]["size"]
        model = build_model(preset, args.quick).to(device).eval()
        folded = optimize_for_inference(model, onednn_convs=device.type == "cpu").to(device)
        pixel_values = torch.randn(1, 3, height, width, device=device)
        cache, reference = {}, None
        for path in paths:
            result = LatencyResult(preset, path, f"{height}x{width}", seed_fps=SEED[preset]["fps"])
            results.append(result)
            try:
                run, setup = path_runner(path, model, folded, device, cache)
                if run is None:
                    result.note = setup
                    log(f"{preset} {path}: skipped ({setup})")
                    continue
                with torch.inference_mode():
                    start = time.perf_counter()
                    first_calls = 3 if path == "compile fp16" else 0
                    for _ in range(first_calls):
                        run(pixel_values)
                    synchronize(device)
                    result.setup_s = (time.perf_counter() - start) if first_calls else None
                    for _ in range(args.warmup):
                        logits = run(pixel_values)
                    times = []
                    for _ in range(args.iterations):
                        synchronize(device)
                        start = time.perf_counter()
                        logits = run(pixel_values)
                        synchronize(device)
                        times.append(time.perf_counter() - start)
                    result.wall_ms = 1000 * statistics.median(times)
                    result.fps = 1000 / result.wall_ms
                    try:
                        result.kernel_ms, result.kernels = profile_call(run, pixel_values, device)
                    except Exception as error:  # noqa: BLE001 - keep the wall time when the profiler fails
                        result.note = f"profiler: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
                    if path in ("eager", "folded"):
                        cache[f"{path} logits"] = logits.float().clone()
                    if path in ("eager graph", "folded graph"):
                        reference = cache.get(f"{path.split()[0]} logits")
                        result.exact = reference is not None and torch.equal(logits.float(), reference)
                log(f"{preset} {path}: {result.wall_ms:.2f} ms" + (f", setup {result.setup_s:.1f} s" if
                                                                   result.setup_s else ""))  # fmt: skip
            except Exception as error:  # noqa: BLE001 - a failed path is reported, the others still run
                result.note = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                log(f"{preset} {path}: FAILED {result.note}")
                traceback.print_exc()
        del model, folded, cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def print_latency(results: list[LatencyResult]) -> None:
    rows = []
    for r in results:
        rows.append([r.model, r.path, r.size, _f(r.wall_ms, 2), _f(r.kernel_ms, 2), _f(r.kernels, 0),
                     _f(r.setup_s, 1), {True: "yes", False: "NO", None: "-"}[r.exact], _f(r.fps, 1), _f(r.seed_fps, 2),
                     r.note])  # fmt: skip
    print_table("Latency, batch 1 (wall: median of synchronised calls; kernels: torch.profiler, one call)",
                ["model", "path", "input", "wall ms", "kernel ms", "kernels", "setup s", "exact", "fps",
                 "V100 fps (mmseg)", "note"], rows)  # fmt: skip
    for model, goal in GOALS_MS.items():
        best = [r for r in results if r.model == model and r.wall_ms is not None and r.path != "compile fp16"]
        if best:
            fastest = min(best, key=lambda r: r.wall_ms)
            verdict = "met" if fastest.wall_ms <= goal else "not met"
            print(f"Goal {model} <= {goal} ms: {fastest.wall_ms:.2f} ms ({fastest.path}): {verdict}")


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------------ predict


def scene(seed: int, height: int, width: int) -> np.ndarray:
    """A (H, W, 3) uint8 street-like picture: sky and road gradients, facades with windows, cars, sensor noise."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = np.where(rows < 0.45, [110, 150, 215] + 40 * rows, [95, 95, 100] - 30 * rows).astype(np.float32)
    image = np.broadcast_to(image, (height, width, 3)).copy()
    for _ in range(12):  # facades and cars
        top, left = rng.integers(0, height * 3 // 4), rng.integers(0, width - width // 8)
        h, w = rng.integers(height // 12, height // 3), rng.integers(width // 20, width // 6)
        image[top : top + h, left : left + w] = rng.integers(20, 230, 3)
        image[top : top + h : 9, left : left + w : 7] *= 0.6  # windows
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_scenes(folder: Path, count: int, unique: int, size: tuple[int, int]) -> list[Path]:
    """`count` PNGs (copies of `unique` different scenes) at Pillow's default compression, written in parallel."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(index: int) -> Path:
        path = folder / f"scene_{index:03d}.png"
        Image.fromarray(scene(index, *size)).save(path)
        return path

    with ThreadPoolExecutor(16) as pool:
        originals = list(pool.map(write, range(min(unique, count))))
    paths = list(originals)
    for index in range(len(originals), count):
        path = folder / f"scene_{index:03d}.png"
        shutil.copyfile(originals[index % len(originals)], path)
        paths.append(path)
    return paths


def save_model_folder(model, folder: Path, size: tuple[int, int]) -> Path:
    """A model folder with a processor whose test scale keeps `size` = (height, width) images as they are (1024x2048:
    Cityscapes' own test scale)."""
    model.save_pretrained(folder)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(max(size), min(size))).save_pretrained(folder)
    return folder


def run_predict(model_dir: Path, images: Path, out: Path, device: torch.device, options: list[str], warmup: int):
    """Images per second of predict's own loop over `images` (after a warm-up run on `warmup` of them)."""
    args = parse_arguments([str(model_dir), str(images), "-o", str(out), "--device", str(device), *options])
    from fpn_seg.predict import load_segmenter

    segmenter = load_segmenter(args)
    inputs = make_stems_distinct(collect_image_inputs(args.inputs, args.output_dir))
    args.output_dir = out / "warmup"
    predict_images(args, segmenter, inputs[:warmup])
    args.output_dir = out / "timed"
    start = time.perf_counter()
    result = predict_images(args, segmenter, inputs)
    seconds = time.perf_counter() - start
    if result.failures or result.processed != len(inputs):
        raise RuntimeError(f"predict failed on {result.failures[:3]}")
    shutil.rmtree(out, ignore_errors=True)
    return len(inputs) / seconds


def plain_loop(model, processor, paths: list[Path], out: Path, device: torch.device) -> float:
    """Seconds per image of the loop a user writes with the public API (the model as loaded, on `device`)."""
    out.mkdir(parents=True, exist_ok=True)
    palette = palette_for(model.config.id2label)
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt").to(device)
        with torch.inference_mode():
            outputs = model(**inputs)
        label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].cpu()
        labels = label_map.numpy().astype(np.uint8)
        Image.fromarray(labels).save(out / f"{path.stem}_label.png")
        Image.blend(image, Image.fromarray(palette[labels]), 0.5).save(out / f"{path.stem}_overlay.png")
    seconds = (time.perf_counter() - start) / len(paths)
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def bench_predict(args, device, workdir: Path) -> dict:
    size = (128, 256) if args.quick else (1024, 2048)
    count = 6 if args.quick else args.predict_images
    images = workdir / "predict_images"
    write_scenes(images, count, unique=min(count, 16), size=size)
    log(f"predict: {count} PNGs of {size[0]}x{size[1]} written")
    model = build_model("fpn_r50_512x1024_80k_cityscapes", args.quick)
    model_dir = save_model_folder(model, workdir / "predict_model", size)
    runs = {}
    for batch_size, precision in args.predict_runs:
        if precision == "fp16" and device.type != "cuda":
            continue
        name = f"batch {batch_size}, {precision}"
        options = ["--batch-size", str(batch_size), "--precision", precision]
        try:
            runs[name] = run_predict(model_dir, images, workdir / "predict_out", device, options, warmup=2 * batch_size)
            log(f"predict {name}: {runs[name]:.1f} images/s")
        except Exception as error:  # noqa: BLE001
            runs[name] = f"{type(error).__name__}: {error}"
            log(f"predict {name}: FAILED {runs[name]}")
            traceback.print_exc()
    processor = SemanticFPNImageProcessor.from_pretrained(model_dir)
    plain = plain_loop(model.to(device).eval(), processor, sorted(images.glob("*.png"))[: args.plain_images],
                       workdir / "plain_out", device)  # fmt: skip
    log(f"plain public-API loop on {device}: {1 / plain:.2f} images/s")
    return {"size": f"{size[0]}x{size[1]}", "images": count, "images_per_s": runs, "plain_loop_images_per_s": 1 / plain}


def print_predict(report: dict) -> None:
    rows = [[name, _f(rate, 1) if isinstance(rate, float) else rate] for name, rate in report["images_per_s"].items()]
    rows.append(["plain public-API loop (model as loaded, PIL saves)", _f(report["plain_loop_images_per_s"], 2)])
    print_table(f"fpn-seg predict over {report['images']} PNGs of {report['size']} (labels + overlays), R-50 "
                "Cityscapes", ["run", "images/s"], rows)  # fmt: skip
    rates = [rate for rate in report["images_per_s"].values() if isinstance(rate, float)]
    if rates:
        print(f"Goal predict >= {PREDICT_GOAL:.0f} images/s: {max(rates):.1f}: "
              f"{'met' if max(rates) >= PREDICT_GOAL else 'not met'}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ agreement


def bench_agreement(args, device) -> dict:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    folder = Path(args.agreement_model)
    if not (folder / "config.json").is_file():
        return {"skipped": f"no model folder at {folder} (run make demo, or pass --agreement-model)"}
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    paths = sorted(Path(args.agreement_images).rglob("*.png"))[: args.agreement_max_images]
    if not paths:
        return {"skipped": f"no PNG under {args.agreement_images}"}
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    reference = SemanticSegmenter(model, processor, device=device)(images)
    total = sum(label_map.numel() for label_map in reference)

    def agreement(label_maps):
        return sum(int((a == b).sum()) for a, b in zip(label_maps, reference)) / total

    report = {"model": str(folder), "images": len(images)}
    precisions = ("fp16", "bf16") if device.type == "cuda" else ("bf16",)
    for precision in precisions:
        report[f"{precision}_agreement"] = agreement(SemanticSegmenter(model, processor, device=device,
                                                                       precision=precision)(images))  # fmt: skip
        log(f"agreement {precision}: {100 * report[f'{precision}_agreement']:.3f}% of the pixels")
    if device.type == "cuda":
        eager = SemanticSegmenter(model, processor, device=device, cuda_graphs=False)(images)
        report["graphs_vs_eager_agreement"] = agreement(eager)
    return report


# ------------------------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    model: str
    variant: str
    batch: int
    crop: str
    step_s: float
    peak_memory_gib: float | None
    seed_memory_gb: float


def bench_training(args, device) -> list[TrainResult]:
    results = []
    for preset in args.train_models:
        batch, (height, width) = SEED[preset]["batch"], SEED[preset]["crop"]
        if args.quick:
            batch, height, width = 2, 64, 64
        model = build_model(preset, args.quick).to(device)
        for variant, dtype in TRAIN_VARIANTS.items():
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            pixel_values = torch.randn(batch, 3, height, width, device=device)
            labels = torch.randint(0, model.config.num_labels, (batch, height, width), device=device)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16 and device.type == "cuda")
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

            def step():
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = model(pixel_values=pixel_values, labels=labels).loss
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            step()  # warm-up: the momenta, cuDNN's plans
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
        log(f"training {preset}: done")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def print_training(results: list[TrainResult]) -> None:
    rows = [[r.model, r.variant, f"{r.batch} x {r.crop}", f"{r.step_s:.3f}", _f(r.peak_memory_gib, 2),
             f"{r.seed_memory_gb:.1f}"] for r in results]  # fmt: skip
    print_table("One training step (SGD), per-GPU batch and crop",
                ["model", "variant", "batch x crop", "step s", "peak GiB", "mmseg GB"], rows)  # fmt: skip


# ------------------------------------------------------------------------------------------------ CPU predict


def bench_cpu_predict(args, workdir: Path) -> dict:
    """predict's loop against the plain public-API loop on the CPU, alternating, `--cpu-rounds` rounds."""
    cpu = torch.device("cpu")
    size = (128, 256) if args.quick else (1024, 2048)
    count = 3 if args.quick else args.cpu_images
    images = workdir / "cpu_images"
    paths = write_scenes(images, count, unique=count, size=size)
    model = build_model("fpn_r50_512x1024_80k_cityscapes", True, depth=18, width=16).eval()  # the demo's size
    model_dir = save_model_folder(model, workdir / "cpu_model", size)
    processor = SemanticFPNImageProcessor.from_pretrained(model_dir)
    plain_loop(model, processor, paths[:1], workdir / "plain_out", cpu)  # warm-up
    plain, ours = [], []
    for round_ in range(args.cpu_rounds):
        plain.append(plain_loop(model, processor, paths, workdir / "plain_out", cpu))
        ours.append(1 / run_predict(model_dir, images, workdir / "cpu_out", cpu, [], warmup=1))
        log(f"cpu-predict round {round_ + 1}: plain {plain[-1]:.3f} s/image, predict {ours[-1]:.3f} s/image")
    plain_s, ours_s = statistics.median(plain), statistics.median(ours)
    return {"size": f"{size[0]}x{size[1]}", "images": count, "rounds": args.cpu_rounds, "threads":
            torch.get_num_threads(), "plain_s_per_image": plain_s, "predict_s_per_image": ours_s,
            "ratio": ours_s / plain_s, "plain_runs": plain, "predict_runs": ours}  # fmt: skip


def print_cpu_predict(report: dict) -> None:
    print_table(f"CPU: fpn-seg predict against the plain public-API loop ({report['images']} PNGs of "
                f"{report['size']}, ResNetV1c-18 width 16, {report['threads']} torch threads, medians of "
                f"{report['rounds']} alternating rounds)", ["loop", "s per image"],
                [["plain public-API loop", f"{report['plain_s_per_image']:.3f}"],
                 ["fpn-seg predict", f"{report['predict_s_per_image']:.3f}"],
                 ["ratio (goal <= 0.6)", f"{report['ratio']:.2f}"]])  # fmt: skip


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a smoke run")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--models", nargs="+", default=list(LATENCY_MODELS), choices=list(SEED))
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compile path (the slowest part)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--predict-images", type=int, default=96, help="1024x2048 PNGs in predict's folder")
    parser.add_argument("--predict-runs", nargs="+", default=["1:fp32", "4:fp32", "4:fp16"],
                        help="predict runs as BATCH:PRECISION")
    parser.add_argument("--plain-images", type=int, default=8, help="images of the plain loop on the device")
    parser.add_argument("--agreement-model", default="demo_output/model")
    parser.add_argument("--agreement-images", default="demo_output/data/leftImg8bit/val")
    parser.add_argument("--agreement-max-images", type=int, default=40)
    parser.add_argument("--train-models", nargs="+", default=list(SEED), choices=list(SEED))
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--cpu-images", type=int, default=8, help="1024x2048 PNGs of the CPU comparison")
    parser.add_argument("--cpu-rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny models, small inputs, one repeat: a smoke run")
    parser.add_argument("--workdir", help="where images and model folders are written (default: a temporary folder)")
    parser.add_argument("--output", help="write every figure as JSON to this path (after each section)")
    args = parser.parse_args(argv)
    args.predict_runs = [(int(run.split(":")[0]), run.split(":")[1]) for run in args.predict_runs]
    if args.quick:
        args.warmup, args.iterations, args.train_steps, args.plain_images = 1, 2, 1, 2
        args.predict_runs, args.train_models = [(2, "fp32")], args.train_models[:1]
    return args


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
    compile_paths = [] if args.no_compile or device.type != "cuda" else [p for p in args.paths if "compile" in p]
    paths = [path for path in args.paths if "compile" not in path]
    log(f"Device: {name}; torch {torch.__version__}; sections {args.sections}" + (" (quick)" if args.quick else ""))
    report = {"device": name, "torch": torch.__version__, "quick": args.quick, "argv": sys.argv[1:]}

    def save():
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(report, indent=1, default=str))

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    steps = {
        "latency": lambda: bench_latency(args, device, paths),
        "predict": lambda: bench_predict(args, device, workdir),
        "agreement": lambda: bench_agreement(args, device),
        "training": lambda: bench_training(args, device),
        "cpu-predict": lambda: bench_cpu_predict(args, workdir),
    }
    printers = {"latency": print_latency, "predict": print_predict, "training": print_training,
                "cpu-predict": print_cpu_predict, "agreement": lambda r: print(json.dumps(r, indent=1))}  # fmt: skip
    try:
        for section in [section for section in SECTIONS if section in args.sections]:
            log(f"section {section}")
            try:
                result = steps[section]()
                report[section] = [asdict(r) for r in result] if isinstance(result, list) else result
                printers[section](result)
            except Exception as error:  # noqa: BLE001 - report it, go on with the next section
                report[section] = {"error": f"{type(error).__name__}: {error}"}
                log(f"section {section} FAILED: {error}")
                traceback.print_exc()
            save()
        if compile_paths and "latency" in args.sections:
            log("section latency: compile (last: the slowest)")
            compiled = bench_latency(args, device, compile_paths)
            earlier = report.get("latency") if isinstance(report.get("latency"), list) else []
            report["latency"] = earlier + [asdict(r) for r in compiled]
            print_latency([LatencyResult(**row) for row in report["latency"]])
            save()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    log("done")


if __name__ == "__main__":
    main()
