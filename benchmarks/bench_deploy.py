"""Deployment on CPU, side by side: our torch paths, our ONNX export in ONNX Runtime (float32 and static int8), and the
same `model.onnx` in OpenVINO (float32, bf16) as the peer a deploying user could pick instead.

    python benchmarks/bench_deploy.py --output benchmarks/results/bench_deploy.json   # R-50, 512x1024 + 512x512, 1 + all threads
    python benchmarks/bench_deploy.py --quick                                         # 256x512, 1 thread, 2 repeats

R-50 (Cityscapes preset, 19 classes) with random weights and random BatchNorm statistics (speed does not depend on
the weights), batch 1. The model is saved, exported with `fpn_seg.deployment.export_onnx` (int8 calibrated on
synthetic street scenes) once into `--workdir` and reused.

Every path runs in its own worker process (its peak resident memory is its own: VmHWM), all started before timing;
the master then calls them round-robin, one call each per round, `--repeats` rounds after one warm-up call, with a
pause between calls so that no idle thread pool spins into the next measurement. Figures are medians; ratios are
against our torch eager float32 forward of the same configuration and run. Needs the `[onnx]` and `[bench]` extras.
"""

import argparse
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench_model import cpu_description, parse_size, print_table, randomised_model, status_bytes

PATHS = {
    "torch eager": "our model as loaded, float32 (the baseline)",
    "torch exact default": "optimize_for_inference: BatchNorm folded, channels_last, oneDNN convs (segment's default)",
    "torch bf16": "bfloat16 autocast + the exact default (segment(bf16=True))",
    "ORT fp32": "ONNX Runtime, our model.onnx (ORTModelForSemanticSegmentation)",
    "ORT int8": "ONNX Runtime, our model_quantized.onnx (precision='int8')",
    "OpenVINO fp32": "OpenVINO, the same model.onnx, INFERENCE_PRECISION_HINT f32",
    "OpenVINO bf16": "OpenVINO, the same model.onnx, INFERENCE_PRECISION_HINT bf16",
    "OpenVINO int8": "OpenVINO, our model_quantized.onnx (not a peer: our int8 file in another runtime)",
}
PEERS = ("OpenVINO fp32", "OpenVINO bf16")
PRESET = "fpn_r50_512x1024_80k_cityscapes"
PAUSE_S = 0.3  # between calls: OpenMP / TBB / ONNX Runtime workers stop spinning


# ----------------------------------------------------------------------------------------------------- the model


def benchmark_model(tiny: bool):
    """The randomised R-50 (Cityscapes preset), or for `--tiny` a narrow ResNetV1c-18 (a smoke run)."""
    if not tiny:
        return randomised_model(50)
    from fpn_seg import ResNetV1cConfig, SemanticFPNForSemanticSegmentation, preset_config

    backbone = ResNetV1cConfig(depth=18, stem_channels=8, base_channels=8)
    config = preset_config(PRESET, backbone_config=backbone, neck_channels=16, head_channels=8)
    return SemanticFPNForSemanticSegmentation(config).eval()


def prepare_workdir(workdir: Path, calibration_size: tuple[int, int], tiny: bool) -> tuple[Path, Path]:
    """Save the benchmark model and export it (float32 + int8) once; returns (model folder, ONNX folder)."""
    from fpn_seg import SemanticFPNImageProcessor
    from fpn_seg.data import generate_street_scenes
    from fpn_seg.deployment import QUANTIZED_FILE_NAME, export_onnx

    model_dir, onnx_dir = workdir / "model", workdir / "onnx"
    height, width = calibration_size
    stamp = workdir / "stamp.json"
    wanted = {"tiny": tiny, "calibration_size": [height, width], "torch": torch.__version__}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and (onnx_dir / QUANTIZED_FILE_NAME).is_file():
        return model_dir, onnx_dir
    started = time.perf_counter()
    model = benchmark_model(tiny)
    model.save_pretrained(model_dir)
    processor = SemanticFPNImageProcessor.from_model_config(model.config, scale=(max(height, width), min(height, width)))
    processor.save_pretrained(model_dir)
    scenes = generate_street_scenes(workdir / "scenes", num_train=4, num_val=0, size=calibration_size, seed=0,
                                    overwrite=True)  # fmt: skip
    report = export_onnx(model_dir, onnx_dir, int8=True, calibration_images=[scenes / "leftImg8bit" / "train"],
                         overwrite=True)  # fmt: skip
    print(report.summary())
    stamp.write_text(json.dumps(wanted))
    print(f"Model saved and exported in {time.perf_counter() - started:.0f} s ({workdir})")
    return model_dir, onnx_dir


def build_path(name: str, model_dir: Path, onnx_dir: Path, threads: int):
    """A `pixel_values (torch, 1x3xHxW) -> logits (numpy)` function for path `name`."""
    if name.startswith("torch"):
        from fpn_seg import SemanticFPNForSemanticSegmentation
        from fpn_seg.optimization import bf16_autocast, optimize_for_inference

        model = SemanticFPNForSemanticSegmentation.from_pretrained(model_dir).eval()
        runner = model if name == "torch eager" else optimize_for_inference(model)
        bf16 = name == "torch bf16"

        def run(pixel_values):
            with torch.inference_mode(), bf16_autocast("cpu", enabled=bf16):
                return runner(pixel_values=pixel_values).logits.float().contiguous().numpy()

        return run
    if name.startswith("ORT"):
        from fpn_seg.deployment import ORTModelForSemanticSegmentation

        model = ORTModelForSemanticSegmentation.from_pretrained(onnx_dir, name.split()[1], num_threads=threads)
        return lambda pixel_values: model(pixel_values).logits.numpy()
    import openvino

    from fpn_seg.deployment.runtime import onnx_model_path

    hint = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[name.split()[1]]
    compiled = openvino.Core().compile_model(
        str(onnx_model_path(onnx_dir, "int8" if name.endswith("int8") else "fp32")), "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"},
    )  # fmt: skip
    request = compiled.create_infer_request()
    return lambda pixel_values: request.infer({0: pixel_values.numpy()})[0]


def worker(args) -> None:
    """One path in one process: load, warm up, save the warm-up logits, then time one call per 'run' line."""
    threads = args.threads[0]
    torch.set_num_threads(threads)
    height, width = args.size
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    rss_before = status_bytes("VmRSS")
    started = time.perf_counter()
    run = build_path(args.path, Path(args.model_dir), Path(args.onnx_dir), threads)
    np.save(args.logits, run(pixel_values))  # the warm-up call
    print(json.dumps({"setup_s": time.perf_counter() - started, "rss_before_load": rss_before}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        run(pixel_values)
        print(json.dumps({"time_s": time.perf_counter() - start}), flush=True)
    print(json.dumps({"peak_rss": status_bytes("VmHWM")}), flush=True)


class Worker:
    """A worker process of this script, driven line by line."""

    def __init__(self, path: str, threads: int, size, model_dir: Path, onnx_dir: Path, scratch: Path):
        self.path, self.logits = path, scratch / f"{path.replace(' ', '_')}.npy"
        command = [sys.executable, __file__, "_worker", "--path", path, "--threads", str(threads),
                   "--size", f"{size[0]}x{size[1]}", "--model-dir", str(model_dir), "--onnx-dir", str(onnx_dir),
                   "--logits", str(self.logits)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready: dict | None = None

    def read(self, timeout: float = 1800) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            raise RuntimeError(f"worker {self.path!r} stopped (exit status {self.process.poll()})")
        return json.loads(line)

    def call(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self.read()["time_s"]

    def stop(self) -> int:
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        peak = self.read()["peak_rss"]
        self.process.wait(timeout=60)
        return peak


# ----------------------------------------------------------------------------------------------------- the run


@dataclass
class PathResult:
    threads: int
    size: str
    path: str
    median_s: float
    ratio_to_eager: float  # this median / the eager median: lower is faster
    peak_rss_mib: float  # the worker's peak resident set (VmHWM): libraries, model, activations
    load_and_run_mib: float  # peak RSS minus RSS before the model was loaded
    setup_s: float  # loading the path (export and quantisation not counted), first call included
    max_abs_diff: float  # |logits - eager logits|, max
    argmax_agreement: float  # fraction of pixels with the eager argmax (random weights: tiny margins)
    times_s: list[float]


def bench_config(args, threads: int, size, model_dir: Path, onnx_dir: Path) -> list[PathResult]:
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as scratch:
        workers = [Worker(path, threads, size, model_dir, onnx_dir, Path(scratch)) for path in args.paths]
        try:
            for worker_ in workers:  # one at a time: a loading worker does not slow another's warm-up much
                worker_.ready = worker_.read()
            times = {worker_.path: [] for worker_ in workers}
            for _ in range(args.repeats):
                for worker_ in workers:
                    time.sleep(PAUSE_S)
                    times[worker_.path].append(worker_.call())
            peaks = {worker_.path: worker_.stop() for worker_ in workers}
        finally:
            for worker_ in workers:
                if worker_.process.poll() is None:
                    worker_.process.kill()
        reference = np.load(workers[0].logits)
        eager_median = statistics.median(times[workers[0].path])
        results = []
        for worker_ in workers:
            logits = np.load(worker_.logits)
            median = statistics.median(times[worker_.path])
            results.append(PathResult(
                threads, f"{size[0]}x{size[1]}", worker_.path, median, median / eager_median,
                peaks[worker_.path] / 2**20, (peaks[worker_.path] - worker_.ready["rss_before_load"]) / 2**20,
                worker_.ready["setup_s"], float(np.abs(logits - reference).max()),
                float((logits.argmax(1) == reference.argmax(1)).mean()), times[worker_.path],
            ))  # fmt: skip
    rows = [[r.path, f"{r.median_s:.3f}", f"{r.ratio_to_eager:.3f}x", f"{1 / r.ratio_to_eager:.2f}x",
             f"{r.peak_rss_mib:.0f}", f"{r.load_and_run_mib:.0f}", f"{r.max_abs_diff:.1e}",
             f"{100 * r.argmax_agreement:.2f}%", f"{r.setup_s:.1f}"] for r in results]  # fmt: skip
    header = ["path", "median s", "time / eager", "speedup", "peak RSS MiB", "model+run MiB", "max |Δ| vs eager",
              "argmax = eager", "setup s"]  # fmt: skip
    model = "narrow ResNetV1c-18 (--tiny)" if args.tiny else "R-50"
    print_table(f"{model} {size[0]}x{size[1]}, batch 1, {threads} thread(s), {args.repeats} rounds", header, rows)
    return results


def print_summary(results: list[PathResult]) -> None:
    configs = sorted({(r.size, r.threads) for r in results}, key=lambda c: (-int(c[0].split("x")[1]), c[1]))
    paths = list(dict.fromkeys(r.path for r in results))
    ratio = {(r.path, r.size, r.threads): r.ratio_to_eager for r in results}
    rows = [[path] + [f"{ratio[(path, *config)]:.3f}x" if (path, *config) in ratio else "-" for config in configs]
            for path in paths]  # fmt: skip
    print_table("Time / torch eager (lower is faster)", ["path"] + [f"{s}, {t} thr" for s, t in configs], rows)
    print("\nGoals (issue 12), per configuration:")
    for size, threads in configs:
        get = lambda path: ratio.get((path, size, threads))  # noqa: E731
        int8, fp32 = get("ORT int8"), get("ORT fp32")
        peers = {path: get(path) for path in PEERS if get(path) is not None}
        if int8 is None or fp32 is None:
            continue
        fastest_peer = min(peers.items(), key=lambda item: item[1]) if peers else ("-", float("inf"))
        print(f"  {size}, {threads} thread(s): int8 {int8:.3f}x of eager (goal <= 0.18x: "
              f"{'met' if int8 <= 0.18 else 'not met'}); fastest peer {fastest_peer[0]} {fastest_peer[1]:.3f}x "
              f"(int8 faster: {'yes' if int8 < fastest_peer[1] else 'no'}); ORT fp32 {fp32:.3f}x vs OpenVINO fp32 "
              f"{peers.get('OpenVINO fp32', float('nan')):.3f}x (at least as fast: "
              f"{'yes' if fp32 <= peers.get('OpenVINO fp32', float('inf')) else 'no'})")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_worker"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (512, 512)])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and all (os.cpu_count())")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up call")
    parser.add_argument("--quick", action="store_true", help="256x512, 1 thread, 2 rounds")
    parser.add_argument("--tiny", action="store_true", help="a narrow ResNetV1c-18 instead of R-50 (a smoke run)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / ".cache" / "bench_deploy")
    parser.add_argument("--output", help="write every figure as JSON to this path")
    # worker-only
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=parse_size, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.threads, args.repeats = [(256, 512)], [1], 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "_worker":
        return worker(args)
    thread_counts = args.threads or sorted({1, os.cpu_count() or 1})
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; Python {platform.python_version()}")
    model_dir, onnx_dir = prepare_workdir(args.workdir, args.sizes[0], args.tiny)
    started, results = time.perf_counter(), []
    for size in args.sizes:
        for threads in thread_counts:
            results += bench_config(args, threads, size, model_dir, onnx_dir)
    print_summary(results)
    print(f"\nTimed in {time.perf_counter() - started:.0f} s.")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        report = {"cpu": cpu_description(), "torch": torch.__version__, "repeats": args.repeats, "tiny": args.tiny,
                  "paths": PATHS, "results": [asdict(result) for result in results]}  # fmt: skip
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
