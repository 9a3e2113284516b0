"""Semantic FPN speed on CPU: forward latency of each optimisation, model FLOPs, matmul rate, one training step.

    python benchmarks/bench_model.py --output benchmarks/results/bench_model.json   # full run, ~11 min when quiet
    python benchmarks/bench_model.py --quick                                        # ~2 min: R-50 512x512 only
    python benchmarks/bench_model.py forward --depths 50 --sizes 512x1024 --batches 1 --threads 1

Sections (sub-commands; `all` runs them all, for each of `--threads`): `forward` (every optimisation on the first
configuration, the baseline / best exact / best bf16 paths on the others), `allocator` (glibc malloc retaining freed
memory, in two worker processes), `train` (one SGD step and its peak memory, one worker process per variant) and the
matmul rates the forward figures are compared with.

Every timing is the median of `--repeats` calls after one warm-up call; the variants of one configuration run
round-robin (one call each per round), so that a load change on a shared machine hits them all alike. Ratios are
against the eager float32 baseline of the same configuration and run. See benchmarks/README.md for every figure.
"""

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from fpn_seg import SemanticFPNForSemanticSegmentation
from fpn_seg.optimization import bf16_autocast, optimize_for_inference, prediction_agreement, retain_freed_memory
from fpn_seg.presets import preset_config

PRESET_OF_DEPTH = {50: "fpn_r50_512x1024_80k_cityscapes", 101: "fpn_r101_512x1024_80k_cityscapes"}
TRAIN_PRESET_OF_DEPTH = {50: "fpn_r50_512x512_160k_ade20k", 101: "fpn_r101_512x512_160k_ade20k"}

# name -> (optimize_for_inference kwargs, or None for the plain eager model; run under bf16 autocast)
VARIANTS: dict[str, tuple[dict | None, bool]] = {
    "eager": (None, False),
    "channels_last": (dict(fold_batch_norm=False, channels_last=True, onednn_convs=False), False),
    "fold_bn": (dict(fold_batch_norm=True, channels_last=False, onednn_convs=False), False),
    "onednn_convs": (dict(fold_batch_norm=False, channels_last=False, onednn_convs=True), False),
    "cl+onednn": (dict(fold_batch_norm=False, channels_last=True, onednn_convs=True), False),
    "fold+cl": (dict(fold_batch_norm=True, channels_last=True, onednn_convs=False), False),
    "fold+cl+onednn": (dict(), False),  # optimize_for_inference's defaults: the best exact eager path
    "compiled": (dict(compile=True), False),
    "bf16": (None, True),
    "bf16+fold+cl": (dict(), True),  # oneDNN convs step aside under autocast
    "bf16+compiled": (dict(compile=True), True),
}
EXACT_VARIANTS = [name for name, (_, bf16) in VARIANTS.items() if not bf16 and "compiled" not in name]
CORE_VARIANTS = ["eager", "fold+cl+onednn", "bf16+fold+cl"]

# name -> (channels_last, bf16 autocast, gradient checkpointing of the backbone's residual blocks)
TRAIN_VARIANTS = {
    "fp32": (False, False, False),
    "fp32+channels_last": (True, False, False),
    "bf16": (False, True, False),
    "bf16+channels_last": (True, True, False),
    "fp32+checkpointing": (False, False, True),
}

# ----------------------------------------------------------------------------------------------------- helpers


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) = (height, width)."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024); got {text!r}") from None
    return height, width


def cpu_description() -> dict:
    """CPU model name and the matrix-related ISA flags of /proc/cpuinfo."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    return {"model": name, "isa_flags": [flag for flag in wanted if flag in flags], "logical_cpus": os.cpu_count()}


def randomised_model(depth: int) -> SemanticFPNForSemanticSegmentation:
    """The full-size architecture with random weights and random BatchNorm statistics (so folding is not a no-op)."""
    torch.manual_seed(0)
    model = SemanticFPNForSemanticSegmentation(preset_config(PRESET_OF_DEPTH[depth]))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def model_flops(model: torch.nn.Module, batch: int, height: int, width: int) -> int:
    """Forward FLOPs (convs and matmuls; 2 per multiply-add) counted by torch's flop counter on the meta device."""
    meta_model = copy.deepcopy(model).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(torch.empty(batch, 3, height, width, device="meta"))
    return counter.get_total_flops()


def timed(function: Callable[[], object]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, minor page faults) of one call of `function`."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Peak GFLOP/s of a square `torch.mm` of `size` in `dtype`: the fastest of `repeats` calls after a warm-up, by
    wall and by CPU time (per thread). The best call rather than the median, so that a busy moment does not lower
    the rate and flatter the model's fraction of it."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    times = [timed(lambda: torch.mm(a, b)) for _ in range(repeats)]
    flop = 2 * size**3
    wall = min(t[0] for t in times)
    cpu = min(t[1] for t in times) / torch.get_num_threads()
    return {"wall": flop / wall / 1e9, "cpu": flop / cpu / 1e9}


def matmul_rates(quick: bool) -> dict[str, dict[str, float]]:
    repeats = 4 if quick else 7
    return {"fp32": matmul_rate(torch.float32, repeats=repeats), "bf16": matmul_rate(torch.bfloat16, repeats=repeats)}


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A Markdown table under `title`."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}\n")
    print("| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
    sys.stdout.flush()


def run_worker(command: list[str]) -> dict:
    """Run this script as a worker process and return the JSON object it prints last."""
    completed = subprocess.run([sys.executable, __file__, *command], capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- forward


@dataclass
class ForwardResult:
    threads: int
    depth: int
    size: str
    batch: int
    variant: str
    gflop: float
    median_s: float  # wall clock
    cpu_median_s: float  # process CPU time / threads: insensitive to being descheduled on a busy machine
    images_per_s: float
    speedup: float  # baseline median / this median (wall), same configuration and run
    cpu_speedup: float  # the same from CPU times
    gflop_per_s: float
    matmul_fraction: float  # achieved GFLOP/s over the same-dtype matmul rate of this thread count (wall)
    cpu_matmul_fraction: float  # the same from CPU times (both rates)
    page_faults: int  # minor page faults per call (median): memory freshly mapped by the allocator
    max_abs_diff: float  # |logits - baseline logits|, max
    max_abs_logit: float  # |baseline logits|, max: the scale max_abs_diff is relative to
    argmax_agreement: float
    setup_s: float  # building the variant (and compiling, for compiled variants: first call included)
    allocator: str = "default"
    times_s: list[float] = field(default_factory=list)
    cpu_times_s: list[float] = field(default_factory=list)


def build_variant(model, name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], float]:
    """(a `pixel_values -> logits` function, seconds spent building it) for variant `name` of `model`."""
    kwargs, bf16 = VARIANTS[name]
    start = time.perf_counter()
    runner = model if kwargs is None else optimize_for_inference(model, **kwargs)

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        with bf16_autocast("cpu", enabled=bf16):
            return runner(pixel_values=pixel_values).logits

    return run, time.perf_counter() - start


def bench_forward_config(model, variants, threads, depth, size, batch, repeats, rates) -> list[ForwardResult]:
    """Time `variants` round-robin on one (model, input size, batch); warm-up = first call (compiles if needed)."""
    height, width = size
    pixel_values = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    flops = model_flops(model, batch, height, width)
    runs, setup, outputs = {}, {}, {}
    with torch.inference_mode():
        for name in variants:
            runs[name], setup[name] = build_variant(model, name)
            start = time.perf_counter()
            outputs[name] = runs[name](pixel_values).float()  # warm-up
            setup[name] += time.perf_counter() - start if "compiled" in name else 0.0
        calls = {name: [] for name in variants}
        for _ in range(repeats):
            for name in variants:
                calls[name].append(timed(lambda: runs[name](pixel_values)))
    wall = {name: [call[0] for call in calls[name]] for name in variants}
    cpu = {name: [call[1] / threads for call in calls[name]] for name in variants}
    baseline, cpu_baseline = statistics.median(wall[variants[0]]), statistics.median(cpu[variants[0]])
    results = []
    for name in variants:
        median, cpu_median = statistics.median(wall[name]), statistics.median(cpu[name])
        rate = rates["bf16" if VARIANTS[name][1] else "fp32"]
        results.append(
            ForwardResult(
                threads=threads,
                depth=depth,
                size=f"{height}x{width}",
                batch=batch,
                variant=name,
                gflop=flops / 1e9,
                median_s=median,
                cpu_median_s=cpu_median,
                images_per_s=batch / median,
                speedup=baseline / median,
                cpu_speedup=cpu_baseline / cpu_median,
                gflop_per_s=flops / median / 1e9,
                matmul_fraction=flops / median / 1e9 / rate["wall"],
                cpu_matmul_fraction=flops / cpu_median / 1e9 / rate["cpu"],
                page_faults=int(statistics.median(call[2] for call in calls[name])),
                max_abs_diff=(outputs[name] - outputs[variants[0]]).abs().max().item(),
                max_abs_logit=outputs[variants[0]].abs().max().item(),
                argmax_agreement=prediction_agreement(outputs[name], outputs[variants[0]]),
                setup_s=setup[name],
                times_s=wall[name],
                cpu_times_s=cpu[name],
            )
        )
    return results


def bench_forward(args, threads: int, rates: dict) -> list[ForwardResult]:
    """One thread: every configuration, all variants on the first. More threads (erratic on a shared 2-core
    machine): the first depth (or `--multi-thread-depths`), size and batch, core variants only."""
    results = []
    multi = threads > 1
    depths = (args.multi_thread_depths or args.depths[:1]) if multi else args.depths
    sizes, batches = (args.sizes[:1], args.batches[:1]) if multi else (args.sizes, args.batches)
    for depth_index, depth in enumerate(depths):
        model = randomised_model(depth)
        for size_index, size in enumerate(sizes):
            for batch in batches:
                primary = not multi and depth_index == 0 and size_index == 0 and batch == batches[0]
                variants = list(args.variants if primary else args.core_variants)
                if args.compile and primary:
                    variants += [name for name in ("compiled", "bf16+compiled") if name not in variants]
                repeats = args.repeats if batch == 1 else max(2, args.repeats - 1)
                config_results = bench_forward_config(model, variants, threads, depth, size, batch, repeats, rates)
                print_forward(config_results)
                results += config_results
        del model
        torch._dynamo.reset()
    return results


def print_forward(results: list[ForwardResult], title: str | None = None) -> None:
    first = results[0]
    title = title or (
        f"R-{first.depth} {first.size} batch {first.batch}, {first.threads} thread(s), {first.gflop:.1f} GFLOP "
        f"per forward ({first.gflop / first.batch:.1f} per image)"
    )
    header = ["variant", "median s", "CPU s", "img/s", "speedup", "CPU speedup", "GFLOP/s", "of matmul"]
    header += ["CPU of matmul", "faults/call", "max|diff|", "rel. diff", "argmax agree", "note"]
    rows = [
        [r.variant, f"{r.median_s:.3f}", f"{r.cpu_median_s:.3f}", f"{r.images_per_s:.2f}", f"{r.speedup:.2f}x"]
        + [f"{r.cpu_speedup:.2f}x", f"{r.gflop_per_s:.0f}", f"{100 * r.matmul_fraction:.0f}%"]
        + [f"{100 * r.cpu_matmul_fraction:.0f}%", f"{r.page_faults / 1000:.0f}k", f"{r.max_abs_diff:.1e}"]
        + [f"{r.max_abs_diff / r.max_abs_logit:.0e}", f"{100 * r.argmax_agreement:.2f}%"]
        + [f"setup {r.setup_s:.0f} s" if "compiled" in r.variant else ""]
        for r in results
    ]
    if first.allocator != "default" or any(r.allocator != first.allocator for r in results):
        header, rows = ["allocator"] + header, [[r.allocator] + row for r, row in zip(results, rows)]
    print_table(title, header, rows)


def print_forward_summary(results: list[ForwardResult], threads: int) -> None:
    """One row per configuration: baseline time and the core variants' speedups (wall and CPU) and matmul fractions."""
    configs = list(dict.fromkeys((r.depth, r.size, r.batch) for r in results))
    best, bf16 = CORE_VARIANTS[1], CORE_VARIANTS[2]
    header = ["model", "size", "batch", "eager s/img", f"{best} speedup (CPU)", f"{bf16} speedup (CPU)"]
    header += [f"{best} of matmul (CPU)", f"{bf16} of bf16 matmul (CPU)"]
    rows = []
    for depth, size, batch in configs:
        by_name = {r.variant: r for r in results if (r.depth, r.size, r.batch) == (depth, size, batch)}
        if not all(name in by_name for name in CORE_VARIANTS):
            continue
        row = [f"R-{depth}", size, batch, f"{by_name['eager'].median_s / batch:.3f}"]
        row += [f"{by_name[name].speedup:.2f}x ({by_name[name].cpu_speedup:.2f}x)" for name in (best, bf16)]
        row += [f"{100 * by_name[name].cpu_matmul_fraction:.0f}%" for name in (best, bf16)]
        rows.append(row)
    print_table(f"Summary, {threads} thread(s): speedups against eager float32 (CPU-time ratios)", header, rows)


# --------------------------------------------------------------------------------------------------- allocator


def forward_worker(args) -> None:
    """One process: the core variants of the first configuration under the allocator `--allocator`; prints JSON."""
    torch.set_num_threads(args.threads[0])
    if args.allocator == "retained" and not retain_freed_memory():
        raise RuntimeError("retain_freed_memory() is not available here (needs glibc)")
    depth, size, batch = args.depths[0], args.sizes[0], args.batches[0]
    results = bench_forward_config(
        randomised_model(depth), args.core_variants, args.threads[0], depth, size, batch, args.repeats, args.rates
    )
    for result in results:
        result.allocator = args.allocator
    print(json.dumps([asdict(result) for result in results]))


def bench_allocator(args, threads: int, rates: dict) -> list[ForwardResult]:
    """The core variants of the first configuration in two fresh processes: glibc's default malloc, then malloc
    keeping freed memory (`retain_freed_memory()`). Ratios are against the default-allocator eager baseline."""
    depth, (height, width), batch = args.depths[0], args.sizes[0], args.batches[0]
    command = ["_forward-worker", "--threads", str(threads), "--depths", str(depth), "--sizes", f"{height}x{width}"]
    repeats = max(2, args.repeats - 1)
    command += ["--batches", str(batch), "--repeats", str(repeats), "--rates", json.dumps(rates)]
    command += ["--core-variants", *args.core_variants]
    results = []
    for allocator in ("default", "retained"):
        results += [ForwardResult(**row) for row in run_worker(command + ["--allocator", allocator])]
    baseline = results[0]
    for result in results:
        result.speedup = baseline.median_s / result.median_s
        result.cpu_speedup = baseline.cpu_median_s / result.cpu_median_s
    title = (
        f"Allocator: R-{depth} {height}x{width} batch {batch}, {threads} thread(s), one process per allocator; "
        "ratios against the default-allocator eager baseline"
    )
    print_forward(results, title)
    return results


# ----------------------------------------------------------------------------------------------------- training


def status_bytes(name: str) -> int:
    """A memory field of /proc/self/status (`VmRSS`: resident now, `VmHWM`: peak resident) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {name} field")


def train_worker(args) -> None:
    """One process, one configuration: prints a JSON line with step times and memory (see README, 'train')."""
    threads = args.threads[0]
    torch.set_num_threads(threads)
    channels_last, bf16, checkpointing = TRAIN_VARIANTS[args.variant]
    torch.manual_seed(0)
    config = preset_config(TRAIN_PRESET_OF_DEPTH[args.depths[0]])
    model = SemanticFPNForSemanticSegmentation(config)
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    pixel_values = torch.randn(args.train_batch, 3, args.crop, args.crop)
    labels = torch.randint(0, config.num_labels, (args.train_batch, args.crop, args.crop))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with bf16_autocast("cpu", enabled=bf16):
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()

    rss_before = status_bytes("VmRSS")
    calls = [timed(step) for _ in range(args.train_steps + 1)][1:]  # the first step (warm-up) creates the momenta
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak across fork + exec into ru_maxrss.
    peak = status_bytes("VmHWM")
    report = {"times_s": [call[0] for call in calls], "cpu_times_s": [call[1] / threads for call in calls]}
    print(json.dumps({**report, "rss_before_steps": rss_before, "peak_rss": peak}))


@dataclass
class TrainResult:
    threads: int
    depth: int
    crop: int
    batch: int
    variant: str
    median_s: float
    cpu_median_s: float
    speedup: float
    cpu_speedup: float
    images_per_s: float
    peak_rss_mib: float  # the worker process's peak resident set (VmHWM)
    step_memory_mib: float  # peak RSS minus RSS after building model, data and optimizer
    times_s: list[float]
    cpu_times_s: list[float]


def bench_train(args, threads: int) -> list[TrainResult]:
    results = []
    for depth in args.train_depths:
        reports = {}
        for variant in args.train_variants:
            command = ["_train-worker", "--variant", variant, "--depths", str(depth), "--threads", str(threads)]
            command += ["--train-steps", str(args.train_steps), "--crop", str(args.crop)]
            reports[variant] = run_worker(command + ["--train-batch", str(args.train_batch)])
        baseline = reports[args.train_variants[0]]
        for variant, report in reports.items():
            median, cpu_median = statistics.median(report["times_s"]), statistics.median(report["cpu_times_s"])
            results.append(
                TrainResult(
                    threads=threads,
                    depth=depth,
                    crop=args.crop,
                    batch=args.train_batch,
                    variant=variant,
                    median_s=median,
                    cpu_median_s=cpu_median,
                    speedup=statistics.median(baseline["times_s"]) / median,
                    cpu_speedup=statistics.median(baseline["cpu_times_s"]) / cpu_median,
                    images_per_s=args.train_batch / median,
                    peak_rss_mib=report["peak_rss"] / 2**20,
                    step_memory_mib=(report["peak_rss"] - report["rss_before_steps"]) / 2**20,
                    times_s=report["times_s"],
                    cpu_times_s=report["cpu_times_s"],
                )
            )
    header = ["model", "variant", "median s/step", "CPU s/step", "img/s", "speedup", "CPU speedup"]
    header += ["peak RSS MiB", "step memory MiB"]
    rows = [
        [f"R-{r.depth}", r.variant, f"{r.median_s:.2f}", f"{r.cpu_median_s:.2f}", f"{r.images_per_s:.2f}"]
        + [f"{r.speedup:.2f}x", f"{r.cpu_speedup:.2f}x", f"{r.peak_rss_mib:.0f}", f"{r.step_memory_mib:.0f}"]
        for r in results
    ]
    title = (
        f"Training step (forward + backward + SGD), crop {args.crop}x{args.crop}, batch {args.train_batch}, "
        f"{threads} thread(s), ADE20K head (150 classes), median of {args.train_steps} steps after a warm-up step"
    )
    print_table(title, header, rows)
    return results


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = ["all", "forward", "allocator", "train", "matmul", "_forward-worker", "_train-worker"]
    parser.add_argument("command", nargs="?", default="all", choices=commands, help="what to run (default all)")
    parser.add_argument("--quick", action="store_true", help="R-50 512x512 batch 1, 1 thread, 2 repeats, no compile")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to run (default 1 2)")
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101], choices=[50, 101])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (512, 512)])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (batch > 1: one fewer)")
    parser.add_argument(
        "--variants", nargs="+", default=EXACT_VARIANTS + ["bf16", "bf16+fold+cl"], choices=list(VARIANTS),
        help="variants of the first configuration (first depth, size and batch); the first is the baseline",
    )  # fmt: skip
    parser.add_argument(
        "--core-variants", nargs="+", default=CORE_VARIANTS, choices=list(VARIANTS),
        help="variants of the other configurations, of the allocator section and of more threads",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="add the torch.compile variants to the first configuration at 1 thread (default: on, off with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--multi-thread-depths", type=int, nargs="+", choices=[50, 101],
        help="depths timed at more than one thread (default: the first of --depths; keeps the full run short)",
    )  # fmt: skip
    parser.add_argument("--train-threads", type=int, nargs="+", default=[1], help="thread counts of the train step")
    parser.add_argument("--train-depths", type=int, nargs="+", default=[50], choices=[50, 101])
    parser.add_argument("--train-variants", nargs="+", default=list(TRAIN_VARIANTS), choices=list(TRAIN_VARIANTS))
    parser.add_argument("--train-steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--output", help="write every figure as JSON to this path")
    # workers only
    parser.add_argument("--variant", default="fp32", choices=list(TRAIN_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--allocator", default="default", choices=["default", "retained"], help=argparse.SUPPRESS)
    parser.add_argument("--rates", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.depths, args.sizes, args.batches = [1], [50], [(512, 512)], [1]
        args.repeats, args.train_steps, args.train_variants = 2, 1, ["fp32", "bf16"]
    if args.compile is None:
        args.compile = not args.quick
    return args


def print_matmul(threads: int, before: dict, after: dict) -> None:
    rows = [
        [dtype, f"{before[dtype]['wall']:.0f}", f"{after[dtype]['wall']:.0f}"]
        + [f"{before[dtype]['cpu']:.0f}", f"{after[dtype]['cpu']:.0f}"]
        for dtype in ("fp32", "bf16")
    ]
    header = ["dtype", "GFLOP/s before", "after", "CPU-time GFLOP/s before", "after"]
    print_table(f"Peak matmul rate, 2048x2048 torch.mm, {threads} thread(s) (fractions use 'before')", header, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command in ("_forward-worker", "_train-worker"):
        (forward_worker if args.command == "_forward-worker" else train_worker)(args)
        return
    started = time.perf_counter()
    report = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "cpu": cpu_description(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "sections": [],
    }
    cpu = report["cpu"]
    print(f"torch {torch.__version__}, {cpu['model']}, {cpu['logical_cpus']} CPUs ({', '.join(cpu['isa_flags'])})")
    for threads in args.threads:
        torch.set_num_threads(threads)
        section = {"threads": threads}
        before = matmul_rates(args.quick)
        print(f"\n=== {threads} thread(s) (torch.get_num_threads() = {torch.get_num_threads()}) ===")
        if args.command in ("all", "forward"):
            forward = bench_forward(args, threads, before)
            print_forward_summary(forward, threads)
            section["forward"] = [asdict(r) for r in forward]
        if args.command in ("all", "allocator") and threads == 1:
            section["allocator"] = [asdict(r) for r in bench_allocator(args, threads, before)]
        if args.command in ("all", "train") and threads in args.train_threads:
            section["train"] = [asdict(r) for r in bench_train(args, threads)]
        after = matmul_rates(args.quick) if args.command != "matmul" else before
        section["matmul_gflop_per_s"] = {"before": before, "after": after}
        print_matmul(threads, before, after)
        report["sections"].append(section)
    report["total_s"] = time.perf_counter() - started
    print(f"\ntotal {report['total_s'] / 60:.1f} min")
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=1)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
