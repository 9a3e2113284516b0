"""Deployment on CPU, side by side: our torch paths, our ONNX export run by our runtimes (ONNX Runtime: float32 and
static int8; OpenVINO: float32, bf16 and static int8), and the peers a deploying user could pick instead: the same
`model.onnx` run directly with OpenVINO (float32, bf16) or ONNX Runtime (float32).

    python benchmarks/bench_deploy.py --output benchmarks/results/bench_deploy.json   # R-50, 512x1024 + 512x512, 1 + 2 threads
    python benchmarks/bench_deploy.py --quick                                         # 256x512, 1 thread, 2 repeats

R-50 (Cityscapes preset, 19 classes) with random weights and random BatchNorm statistics (speed does not depend on
the weights), batch 1. The model is saved, exported with `fpn_seg.deployment.export_onnx` (int8 calibrated on
synthetic street scenes, or `--calibration-images`) once into `--workdir` and reused.

Every path runs in its own worker process (its peak resident memory is its own: VmHWM), all started before timing;
the master then calls them round-robin, one call each per round, `--repeats` rounds after one warm-up call, with a
pause between calls so that no idle thread pool spins into the next measurement. Each call is timed in wall-clock
and in the worker's CPU time (`time.process_time`: all its threads; with one thread, the figure least disturbed by
other processes on a shared machine). Figures are medians; ratios are against our torch eager float32 forward of the
same configuration and run. A path this CPU cannot run as named (bf16 without native bfloat16) is listed as such, not
timed. Needs the `[onnx]` and `[openvino]` extras (`--nncf`: the `nncf` package).
"""

import argparse
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench_model import cpu_description, parse_size, print_table, randomised_model, status_bytes

PATHS = {
    "torch eager": "our model as loaded, float32 (the baseline)",
    "torch exact default": "optimize_for_inference: BatchNorm folded, channels_last, oneDNN convs (segment's default)",
    "torch compile": "optimize_for_inference(compile=True): torch.compile with freezing, float32 (inductor)",
    "torch bf16": "bfloat16 autocast + the exact default (segment(bf16=True)); native bf16 CPUs only",
    "torch bf16 compile": "bfloat16 autocast + torch.compile with freezing; native bf16 CPUs only",
    "ORT fp32": "ONNX Runtime, our model.onnx (ORTModelForSemanticSegmentation)",
    "ORT int8": "ONNX Runtime, our model_quantized.onnx (precision='int8')",
    "OV fp32": "OpenVINO, our model.onnx (OVModelForSemanticSegmentation, f32)",
    "OV bf16": "OpenVINO, our model.onnx in bfloat16 (precision='bf16'); CPUs with OpenVINO bf16 kernels only",
    "OV int8": "OpenVINO, our model_quantized.onnx (precision='int8')",
    "peer ORT fp32": "peer: a user's onnxruntime.InferenceSession on the same model.onnx, default options",
    "peer OpenVINO fp32": "peer: a user's openvino compile_model of the same model.onnx, INFERENCE_PRECISION_HINT f32",
    "peer OpenVINO bf16": "peer: the same with INFERENCE_PRECISION_HINT bf16 (OpenVINO computes f32 without bf16 kernels)",
}
# Experiments (--paths ...): OpenVINO's static-shape copies, int8 with bf16 float parts, NNCF's quantisation.
EXPERIMENTS = {
    "OV int8 static": "our OpenVINO int8 with static_shapes=1 (a copy compiled for the input's shape)",
    "OV fp32 static": "our OpenVINO fp32 with static_shapes=1",
    "OV int8 dynamic": "our OpenVINO int8 with static_shapes=0 (the default since 2026-12-04; was 2 before)",
    "OV int8 bf16 float": "our model_quantized.onnx in OpenVINO with INFERENCE_PRECISION_HINT bf16 for its float parts",
    "OV NNCF int8": "OpenVINO's own post-training quantisation (nncf.quantize, same calibration images) of model.onnx",
}
ALL_PATHS = {**PATHS, **EXPERIMENTS}
DEFAULT_PATHS = list(PATHS)
PEERS = ("peer ORT fp32", "peer OpenVINO fp32", "peer OpenVINO bf16")
GOAL_RATIO = 0.8  # issue 22: fpn_seg's fastest path at most 0.8x the time of the fastest peer path
PRESET = "fpn_r50_512x1024_80k_cityscapes"
PAUSE_S = 0.3  # between calls: OpenMP / TBB / ONNX Runtime workers stop spinning
NOTES: list[str] = []  # a worker's notes on what its path really computes


class Unavailable(Exception):
    """A path this machine cannot run as named (e.g. bf16 without native bfloat16): listed, not timed."""


# ----------------------------------------------------------------------------------------------------- the model


def benchmark_model(tiny: bool):
    """The randomised R-50 (Cityscapes preset), or for `--tiny` a narrow ResNetV1c-18 (a smoke run)."""
    if not tiny:
        return randomised_model(50)
    from fpn_seg import ResNetV1cConfig, SemanticFPNForSemanticSegmentation, preset_config

    backbone = ResNetV1cConfig(depth=18, stem_channels=8, base_channels=8)
    config = preset_config(PRESET, backbone_config=backbone, neck_channels=16, head_channels=8)
    return SemanticFPNForSemanticSegmentation(config).eval()


def prepare_workdir(workdir: Path, calibration_size: tuple[int, int], tiny: bool,
                    calibration_images: Path | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Save the benchmark model and export it (float32 + int8) once; returns (model folder, ONNX folder)."""
    from fpn_seg import SemanticFPNImageProcessor
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
    if calibration_images is None:
        from fpn_seg.data import generate_street_scenes

        scenes = generate_street_scenes(workdir / "scenes", num_train=4, num_val=0, size=calibration_size, seed=0,
                                        overwrite=True)  # fmt: skip
        calibration_images = scenes / "leftImg8bit" / "train"
    report = export_onnx(model_dir, onnx_dir, int8=True, calibration_images=[calibration_images], overwrite=True)
    print(report.summary())
    (workdir / "calibration.txt").write_text(str(calibration_images))
    stamp.write_text(json.dumps(wanted))
    print(f"Model saved and exported in {time.perf_counter() - started:.0f} s ({workdir})")
    return model_dir, onnx_dir


def nncf_model(workdir: Path, onnx_dir: Path) -> Path:
    """OpenVINO's own post-training quantisation of `model.onnx` with NNCF (default preset, the export's calibration
    images after the processor), saved once as `nncf/model.xml`; needs the `nncf` package (benchmark-only)."""
    path = workdir / "nncf" / "model.xml"
    if path.is_file():
        return path
    import nncf
    import openvino

    from fpn_seg import SemanticFPNImageProcessor
    from fpn_seg.deployment.export import calibration_pixel_values
    from fpn_seg.image_reading import image_to_tensor

    processor = SemanticFPNImageProcessor.from_pretrained(onnx_dir)
    files = sorted(Path((workdir / "calibration.txt").read_text()).rglob("*.png"))[:32]
    inputs = [x.numpy() for x in calibration_pixel_values(processor, (image_to_tensor(str(f)) for f in files))]
    started = time.perf_counter()
    quantized = nncf.quantize(openvino.Core().read_model(onnx_dir / "model.onnx"), nncf.Dataset(inputs),
                              subset_size=len(inputs))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(quantized, str(path))
    print(f"NNCF quantised model.onnx on {len(inputs)} images in {time.perf_counter() - started:.0f} s -> {path}")
    return path


def build_path(name: str, model_dir: Path, onnx_dir: Path, threads: int):
    """A `pixel_values (torch, 1x3xHxW) -> logits (numpy)` function for path `name`; `Unavailable` when this machine
    cannot run it as named."""
    if name.startswith("torch"):
        from fpn_seg import SemanticFPNForSemanticSegmentation
        from fpn_seg.optimization import bf16_autocast, bf16_is_fast, optimize_for_inference

        bf16 = "bf16" in name
        if bf16 and not bf16_is_fast():
            raise Unavailable("no native bf16 on this CPU (torch would emulate it, slower than float32)")
        model = SemanticFPNForSemanticSegmentation.from_pretrained(model_dir).eval()
        runner = model if name == "torch eager" else optimize_for_inference(model, compile="compile" in name)

        def run(pixel_values):
            with torch.inference_mode(), bf16_autocast("cpu", enabled=bf16):
                return runner(pixel_values=pixel_values).logits.float().contiguous().numpy()

        return run
    if name in ("ORT fp32", "ORT int8"):
        from fpn_seg.deployment import ORTModelForSemanticSegmentation

        model = ORTModelForSemanticSegmentation.from_pretrained(onnx_dir, name.split()[1], num_threads=threads)
        return lambda pixel_values: model(pixel_values).logits.numpy()
    if name in ("OV fp32", "OV bf16", "OV int8", "OV int8 static", "OV fp32 static", "OV int8 dynamic"):
        from fpn_seg.deployment import OVModelForSemanticSegmentation, PrecisionUnavailableError

        options = {"static_shapes": 1} if name.endswith("static") else {"static_shapes": 0}
        try:
            model = OVModelForSemanticSegmentation.from_pretrained(onnx_dir, name.split()[1], threads, **options)
        except PrecisionUnavailableError:
            raise Unavailable("no bf16 kernels in OpenVINO for this CPU (refused by OVModelForSemanticSegmentation)")
        return lambda pixel_values: model(pixel_values).logits.numpy()
    if name == "peer ORT fp32":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda pixel_values: session.run(None, {"pixel_values": pixel_values.numpy()})[0]
    import openvino

    from fpn_seg.deployment import onnx_model_path

    if name == "OV NNCF int8":
        path, hint = nncf_model(Path(onnx_dir).parent, onnx_dir), "f32"
    else:
        path = onnx_model_path(onnx_dir, "int8" if "int8" in name else "fp32")
        hint = "bf16" if "bf16" in name else "f32"
    compiled = openvino.Core().compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    )  # fmt: skip
    if hint == "bf16" and compiled.get_property("INFERENCE_PRECISION_HINT") != openvino.Type.bf16:
        if name == "OV int8 bf16 float":
            raise Unavailable("no bf16 kernels in OpenVINO for this CPU")
        NOTES.append("OpenVINO computes f32 here: no bf16 kernels for this CPU")
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
    try:
        run = build_path(args.path, Path(args.model_dir), Path(args.onnx_dir), threads)
    except Unavailable as reason:
        print(json.dumps({"unavailable": str(reason)}), flush=True)
        return
    np.save(args.logits, run(pixel_values))  # the warm-up call
    ready = {"setup_s": time.perf_counter() - started, "rss_before_load": rss_before, "note": "; ".join(NOTES)}
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start, cpu = time.perf_counter(), time.process_time()
        run(pixel_values)
        print(json.dumps({"time_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}), flush=True)
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

    def call(self) -> tuple[float, float]:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        reply = self.read()
        return reply["time_s"], reply["cpu_s"]

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
    median_s: float  # wall-clock; NaN for a path not run here (see note)
    median_cpu_s: float  # the worker's CPU time (all its threads)
    ratio_to_eager: float  # this median / the eager median: lower is faster
    cpu_ratio_to_eager: float
    peak_rss_mib: float  # the worker's peak resident set (VmHWM): libraries, model, activations
    load_and_run_mib: float  # peak RSS minus RSS before the model was loaded
    setup_s: float  # loading the path (export and quantisation not counted), first call included
    max_abs_diff: float  # |logits - eager logits|, max
    argmax_agreement: float  # fraction of pixels with the eager argmax (random weights: tiny margins)
    times_s: list[float] = field(default_factory=list)
    cpu_times_s: list[float] = field(default_factory=list)
    note: str = ""  # why the path did not run here, or what it really computed


def _unavailable_result(threads, size, path, note) -> PathResult:
    nan = float("nan")
    return PathResult(threads, f"{size[0]}x{size[1]}", path, nan, nan, nan, nan, nan, nan, nan, nan, nan, note=note)


def bench_config(args, threads: int, size, model_dir: Path, onnx_dir: Path) -> list[PathResult]:
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as scratch:
        workers = [Worker(path, threads, size, model_dir, onnx_dir, Path(scratch)) for path in args.paths]
        try:
            for worker_ in workers:  # one at a time: a loading worker does not slow another's warm-up much
                worker_.ready = worker_.read()
            running = [worker_ for worker_ in workers if "unavailable" not in worker_.ready]
            times = {worker_.path: [] for worker_ in running}
            for _ in range(args.repeats):
                for worker_ in running:
                    time.sleep(PAUSE_S)
                    times[worker_.path].append(worker_.call())
            peaks = {worker_.path: worker_.stop() for worker_ in running}
        finally:
            for worker_ in workers:
                if worker_.process.poll() is None:
                    worker_.process.kill()
        reference = np.load(workers[0].logits)
        eager_wall = statistics.median(t for t, _ in times[workers[0].path])
        eager_cpu = statistics.median(c for _, c in times[workers[0].path])
        results = []
        for worker_ in workers:
            if "unavailable" in worker_.ready:
                results.append(_unavailable_result(threads, size, worker_.path, worker_.ready["unavailable"]))
                continue
            logits = np.load(worker_.logits)
            wall = statistics.median(t for t, _ in times[worker_.path])
            cpu = statistics.median(c for _, c in times[worker_.path])
            results.append(PathResult(
                threads, f"{size[0]}x{size[1]}", worker_.path, wall, cpu, wall / eager_wall, cpu / eager_cpu,
                peaks[worker_.path] / 2**20, (peaks[worker_.path] - worker_.ready["rss_before_load"]) / 2**20,
                worker_.ready["setup_s"], float(np.abs(logits - reference).max()),
                float((logits.argmax(1) == reference.argmax(1)).mean()), [t for t, _ in times[worker_.path]],
                [c for _, c in times[worker_.path]], worker_.ready.get("note", ""),
            ))  # fmt: skip
    rows = []
    for r in results:
        if math.isnan(r.median_s):
            rows.append([r.path] + ["-"] * 9 + [r.note])
            continue
        rows.append([r.path, f"{r.median_s:.3f}", f"{r.median_cpu_s:.3f}", f"{r.ratio_to_eager:.3f}x",
                     f"{r.cpu_ratio_to_eager:.3f}x", f"{r.peak_rss_mib:.0f}", f"{r.load_and_run_mib:.0f}",
                     f"{r.max_abs_diff:.1e}", f"{100 * r.argmax_agreement:.2f}%", f"{r.setup_s:.1f}", r.note])  # fmt: skip
    header = ["path", "median s", "CPU s", "time / eager", "CPU / eager", "peak RSS MiB", "model+run MiB",
              "max |Δ| vs eager", "argmax = eager", "setup s", "note"]  # fmt: skip
    model = "narrow ResNetV1c-18 (--tiny)" if args.tiny else "R-50"
    print_table(f"{model} {size[0]}x{size[1]}, batch 1, {threads} thread(s), {args.repeats} rounds", header, rows)
    return results


def goal_ratios(results: list[PathResult], cpu: bool = False) -> dict[tuple[str, int], tuple[str, str, float]]:
    """Per (size, threads): (fpn_seg's fastest path, the fastest peer path, their time ratio), over the paths that
    ran as named (the peer OpenVINO bf16 counts as it ran: it is what a user gets from that setting)."""
    key = "median_cpu_s" if cpu else "median_s"
    found = {}
    for config in {(r.size, r.threads) for r in results}:
        timed = [r for r in results if (r.size, r.threads) == config and not math.isnan(getattr(r, key))]
        ours = [r for r in timed if r.path in PATHS and r.path not in PEERS]
        peers = [r for r in timed if r.path in PEERS]
        if ours and peers:
            best = min(ours, key=lambda r: getattr(r, key))
            peer = min(peers, key=lambda r: getattr(r, key))
            found[config] = (best.path, peer.path, getattr(best, key) / getattr(peer, key))
    return found


def print_summary(results: list[PathResult]) -> None:
    configs = sorted({(r.size, r.threads) for r in results}, key=lambda c: (-int(c[0].split("x")[1]), c[1]))
    paths = list(dict.fromkeys(r.path for r in results))
    by_key = {(r.path, r.size, r.threads): r for r in results}
    for title, attribute in (("wall-clock", "ratio_to_eager"), ("CPU time", "cpu_ratio_to_eager")):
        rows = []
        for path in paths:
            cells = []
            for config in configs:
                result = by_key.get((path, *config))
                value = getattr(result, attribute) if result else float("nan")
                cells.append("-" if math.isnan(value) else f"{value:.3f}x")
            rows.append([path] + cells)
        print_table(f"Time / torch eager, {title} (lower is faster)", ["path"] + [f"{s}, {t} thr" for s, t in configs],
                    rows)  # fmt: skip
    print(f"\nGoal (issue 22): fpn_seg's fastest path at most {GOAL_RATIO}x the time of the fastest peer path:")
    for label, cpu in (("wall-clock", False), ("CPU time", True)):
        for (size, threads), (best, peer, ratio) in sorted(goal_ratios(results, cpu).items(),
                                                            key=lambda item: configs.index(item[0])):  # fmt: skip
            verdict = "met" if ratio <= GOAL_RATIO else "not met"
            print(f"  {label:10s} {size}, {threads} thread(s): {best} / {peer} = {ratio:.3f}x ({verdict})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "_worker"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (512, 512)])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 and 2)")
    parser.add_argument("--paths", nargs="+", default=DEFAULT_PATHS, choices=list(ALL_PATHS),
                        help="default: every path but the experiments " + ", ".join(EXPERIMENTS))  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up call")
    parser.add_argument("--quick", action="store_true", help="256x512, 1 thread, 2 rounds")
    parser.add_argument("--tiny", action="store_true", help="a narrow ResNetV1c-18 instead of R-50 (a smoke run)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / ".cache" / "bench_deploy")
    parser.add_argument("--calibration-images", type=Path, help="int8 calibration images (default: synthetic scenes)")
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
    if args.command == "run" and args.paths[0] != "torch eager":
        parser.error("--paths must start with 'torch eager' (the baseline of every ratio).")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "_worker":
        return worker(args)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; Python {platform.python_version()}")
    model_dir, onnx_dir = prepare_workdir(args.workdir, args.sizes[0], args.tiny, args.calibration_images)
    if "OV NNCF int8" in args.paths:
        nncf_model(args.workdir, onnx_dir)  # once, before any worker starts
    started, results = time.perf_counter(), []
    for size in args.sizes:
        for threads in args.threads:
            results += bench_config(args, threads, size, model_dir, onnx_dir)
    print_summary(results)
    print(f"\nTimed in {time.perf_counter() - started:.0f} s.")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        report = {"cpu": cpu_description(), "torch": torch.__version__, "repeats": args.repeats, "tiny": args.tiny,
                  "paths": {path: ALL_PATHS[path] for path in args.paths}, "goal": {
                      f"{size}, {threads} thr": {"fpn_seg": best, "peer": peer, "ratio": ratio}
                      for (size, threads), (best, peer, ratio) in goal_ratios(results).items()},
                  "results": [asdict(result) for result in results]}  # fmt: skip
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
