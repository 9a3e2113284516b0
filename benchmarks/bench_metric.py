"""Benchmark: `fpn_seg.metrics` mean IoU against a faithful NumPy reimplementation of evaluate's `mean_iou`.

evaluate's algorithm (the part after its Arrow encode / image decode, which is left out here): for each map, copy
prediction and reference, apply `label_map` / `reduce_labels` to the reference, keep the pixels whose reference is not
`ignore_index`, and take three `np.histogram(..., bins=num_labels, range=(0, num_labels - 1))` (intersection,
prediction, reference) summed in float64. `fpn_seg` counts one `(C + 1) ** 2` confusion matrix with a lookup table
and one `torch.bincount` per map.

Scenarios (the issue's): 100 maps of 512x512 with 150 classes (ADE20K-like, raw annotations with
`reduce_labels=True`) and 20 maps of 1024x2048 with 19 classes (Cityscapes-like train ids, 255 ignored). Maps are
uint8 NumPy arrays, as decoded label PNGs; `fpn_seg` is also timed on int64 torch tensors (an argmax output) and on
CUDA when available. Both sides must give the same results (checked) before any time is reported.

Threads: torch runs on one intra-op thread by default (`--threads`), as NumPy's histograms do; on a small shared
machine torch's multi-threaded elementwise ops also stall whenever another process holds a core.

Memory: peak resident-set growth during one pass over the data (Linux `VmHWM`, reset through
`/proc/self/clear_refs`; covers NumPy and torch allocations) and the tracemalloc peak (Python / NumPy allocations
only; torch's allocator is not traced), measured after all timings with glibc's mmap threshold fixed at 1 MiB so
that freed blocks are returned rather than cached (otherwise the RSS shows the allocator's cache, not live data).

    python benchmarks/bench_metric.py --output benchmarks/results/bench_metric.json
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fpn_seg.metrics import mean_iou

BASELINE = "evaluate algorithm (NumPy, uint8 maps)"
RESULT_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


@dataclass(frozen=True)
class Scenario:
    name: str
    num_images: int
    height: int
    width: int
    num_labels: int
    reduce_labels: bool  # raw ADE20K-style annotations (0 = "other") as evaluate users pass them

    @property
    def megapixels(self) -> float:
        return self.num_images * self.height * self.width / 1e6


SCENARIOS = {
    "ade20k": Scenario("ade20k: 100 x 512x512, 150 classes", 100, 512, 512, 150, True),
    "cityscapes": Scenario("cityscapes: 20 x 1024x2048, 19 classes", 20, 1024, 2048, 19, False),
}


def evaluate_numpy_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                            reduce_labels=False) -> dict:  # fmt: skip
    """evaluate 0.4's `mean_iou` algorithm, step for step (its redundant mask and copy included), in NumPy."""
    histogram = {"bins": num_labels, "range": (0, num_labels - 1)}
    totals = np.zeros((4, num_labels), dtype=np.float64)  # intersection, union, prediction area, label area
    for prediction, reference in zip(predictions, references):
        prediction, reference = np.array(prediction), np.array(reference)
        if label_map is not None:
            original = reference.copy()
            for old_id, new_id in label_map.items():
                reference[original == old_id] = new_id
        if reduce_labels:
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        counted = reference != ignore_index
        counted = np.not_equal(reference, ignore_index)  # evaluate computes the mask twice
        prediction = prediction[counted]
        reference = np.array(reference)[counted]
        intersection = np.histogram(prediction[prediction == reference], **histogram)[0]
        prediction_area = np.histogram(prediction, **histogram)[0]
        label_area = np.histogram(reference, **histogram)[0]
        totals += (intersection, prediction_area + label_area - intersection, prediction_area, label_area)
    intersection, union, _, label_area = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, accuracy = intersection / union, intersection / label_area
        results = {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(accuracy),
                   "overall_accuracy": intersection.sum() / label_area.sum(), "per_category_iou": iou,
                   "per_category_accuracy": accuracy}  # fmt: skip
    if nan_to_num is not None:
        results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
    return results


def make_maps(scenario: Scenario, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """uint8 (prediction, reference) maps made of 16x16 blocks: references with ignored blocks (255, or 0 for raw
    ADE20K-style annotations), predictions that are right on about 70% of the blocks."""
    rng = np.random.default_rng(seed)
    grid = (scenario.height // 16, scenario.width // 16)
    offset = 1 if scenario.reduce_labels else 0  # raw annotations: class c is stored as c + 1, 0 is "other"
    predictions, references = [], []
    for _ in range(scenario.num_images):
        reference = rng.integers(0, scenario.num_labels, size=grid) + offset
        reference[rng.random(grid) < 0.1] = 0 if scenario.reduce_labels else 255
        prediction = reference - offset
        wrong = rng.random(grid) < 0.3
        prediction[wrong] = rng.integers(0, scenario.num_labels, size=int(wrong.sum()))
        prediction = np.clip(prediction, 0, scenario.num_labels - 1)
        upsample = np.ones((16, 16), dtype=np.uint8)
        references.append(np.kron(reference.astype(np.uint8), upsample))
        predictions.append(np.kron(prediction.astype(np.uint8), upsample))
    return predictions, references


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_growth_mib(run: Callable[[], object]) -> float | None:
    """Peak resident-set growth (MiB) during `run()`: Linux VmHWM after resetting it, minus VmRSS before."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # hand freed heap pages back, so that reusing them counts as growth again
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    run()
    peak = _rss_kib("VmHWM")
    return None if before is None or peak is None else (peak - before) / 1024


def tracemalloc_peak_mib(run: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def assert_same(actual: dict, expected: dict, label: str) -> None:
    for key in RESULT_KEYS:
        np.testing.assert_allclose(
            actual[key], expected[key], rtol=0, atol=1e-6, equal_nan=True, err_msg=f"{label}: {key}"
        )


def time_runs(run: Callable[[], dict], repeats: int, synchronize: Callable[[], None]) -> dict:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return {"times_s": times, "best_s": min(times), "median_s": statistics.median(times)}


def scenario_methods(scenario: Scenario, devices: Sequence[str]) -> tuple[dict, dict]:
    """({label: (run, synchronize)}, the evaluate-algorithm results) on the scenario's maps."""
    predictions, references = make_maps(scenario)
    policy = {"num_labels": scenario.num_labels, "ignore_index": 255, "reduce_labels": scenario.reduce_labels}
    methods: dict[str, tuple[Callable[[], dict], Callable[[], None]]] = {
        BASELINE: (lambda: evaluate_numpy_mean_iou(predictions, references, **policy), lambda: None),
        "fpn_seg MeanIoU (NumPy uint8 maps, CPU)": (lambda: mean_iou(predictions, references, **policy), lambda: None),
    }
    for device in devices:
        tensors = [torch.from_numpy(p).to(device, torch.int64) for p in predictions]
        labels = [torch.from_numpy(r).to(device, torch.int64) for r in references]
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        methods[f"fpn_seg MeanIoU (torch int64 maps, {device})"] = (
            lambda tensors=tensors, labels=labels: mean_iou(tensors, labels, **policy),
            sync,
        )
    return methods, evaluate_numpy_mean_iou(predictions, references, **policy)


def time_scenario(scenario: Scenario, repeats: int, devices: Sequence[str]) -> dict:
    methods, expected = scenario_methods(scenario, devices)
    rows = {}
    for label, (run, sync) in methods.items():
        assert_same(run(), expected, label)  # also the warm-up
        rows[label] = time_runs(run, repeats, sync)
        rows[label]["images_per_s"] = scenario.num_images / rows[label]["best_s"]
        rows[label]["megapixels_per_s"] = scenario.megapixels / rows[label]["best_s"]
    for row in rows.values():
        row["speedup_vs_evaluate"] = rows[BASELINE]["best_s"] / row["best_s"]
    return {"scenario": scenario.__dict__ | {"name": scenario.name}, "mean_iou": float(expected["mean_iou"]),
            "methods": rows}  # fmt: skip


def measure_scenario_memory(scenario: Scenario, devices: Sequence[str], result: dict) -> None:
    """Adds `peak_rss_growth_mib` and `tracemalloc_peak_mib` to each method's row of `result`."""
    methods, _ = scenario_methods(scenario, devices)
    for label, (run, _) in methods.items():
        result["methods"][label]["peak_rss_growth_mib"] = peak_rss_growth_mib(run)
        result["methods"][label]["tracemalloc_peak_mib"] = tracemalloc_peak_mib(run)


def format_table(results: list[dict]) -> str:
    header = ("method", "best s", "median s", "img/s", "Mpx/s", "speed-up", "peak RSS +MiB", "tracemalloc MiB")
    lines = []
    for result in results:
        lines.append(f"\n{result['scenario']['name']} (mIoU {100 * result['mean_iou']:.2f})")
        table = [header]
        for label, row in result["methods"].items():
            rss = row["peak_rss_growth_mib"]
            table.append((label, f"{row['best_s']:.3f}", f"{row['median_s']:.3f}", f"{row['images_per_s']:.1f}",
                          f"{row['megapixels_per_s']:.1f}", f"{row['speedup_vs_evaluate']:.2f}x",
                          "n/a" if rss is None else f"{rss:.1f}", f"{row['tracemalloc_peak_mib']:.1f}"))  # fmt: skip
        widths = [max(len(row[column]) for row in table) for column in range(len(header))]
        for index, row in enumerate(table):
            cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells))
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", help="write the results as JSON to this file")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["ade20k", "cityscapes"])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the data per method (best reported)")
    parser.add_argument("--num-images", type=int, help="override every scenario's number of maps (quick runs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as NumPy; 0: torch's default)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        if args.num_images:
            scenario = Scenario(scenario.name.replace(str(scenario.num_images), str(args.num_images), 1),
                                args.num_images, scenario.height, scenario.width, scenario.num_labels,
                                scenario.reduce_labels)  # fmt: skip
        results.append((scenario, time_scenario(scenario, args.repeats, devices)))
    if _LIBC is not None:
        # Memory passes come after every timing: a fixed mmap threshold makes glibc hand every block of 1 MiB or
        # more back when it is freed, so that the peak RSS shows live memory rather than the blocks it caches.
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    for scenario, result in results:
        measure_scenario_memory(scenario, devices, result)
    results = [result for _, result in results]
    environment = {
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_1min": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }  # fmt: skip
    print(format_table(results))
    print(f"\nspeed-up = evaluate-algorithm best time / method best time (same run); {environment}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as file:
            json.dump({"environment": environment, "results": results}, file, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
