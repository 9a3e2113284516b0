"""Benchmark: preprocessing throughput of `SemanticFPNImageProcessor` against transformers' `SegformerImageProcessor`
(PIL backend) on the same images, in the same run.

transformers 5.x splits image processors by backend: `SegformerImageProcessor` is the torchvision backend and
`SegformerImageProcessorPil` the PIL / NumPy one (`AutoImageProcessor.from_pretrained(..., backend="pil")` picks
it; it is also what transformers falls back to without torchvision). The baseline is `SegformerImageProcessorPil`,
set to produce the same output size as ours (resize + rescale + normalise, `return_tensors="pt"`).

Inputs are PIL RGB images, as `pipeline("image-segmentation")` passes them. Scenarios:
- Cityscapes: 1024x2048 images at the Cityscapes test scale (2048, 1024): not resized, only converted + normalised;
- ADE20K: 512x683 images at the ADE20K test scale (2048, 512): likewise not resized;
- ADE20K resize: 375x500 images enlarged to 512x683 (bilinear, as most ADE20K images are resized at test time).

Timing: both processors are timed in alternating rounds (so that both see the same machine load); each round runs
the processor over a batch of distinct images one call at a time; the best round of each is reported as images/s,
with the speedup of the best rounds and the ratio of the median rounds.
Threads: torch runs on one intra-op thread by default (`--threads`), as PIL / NumPy do; on a small shared machine
torch's multi-threaded elementwise ops stall whenever another process holds a core.

    python benchmarks/bench_processor.py --output benchmarks/results/bench_processor.json
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import SegformerImageProcessorPil

from fpn_seg.presets import preset_processor


@dataclass(frozen=True)
class Scenario:
    name: str
    preset: str
    height: int
    width: int
    num_images: int


SCENARIOS = (
    Scenario("cityscapes 1024x2048", "fpn_r50_512x1024_80k_cityscapes", 1024, 2048, 4),
    Scenario("ade20k 512x683", "fpn_r50_512x512_160k_ade20k", 512, 683, 8),
    Scenario("ade20k 375x500 -> 512x683", "fpn_r50_512x512_160k_ade20k", 375, 500, 8),
)


def make_images(scenario: Scenario) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shape = (scenario.height, scenario.width, 3)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(scenario.num_images)]


def time_round(process: Callable[[Image.Image], object], images: list[Image.Image], rounds: list[float]):
    """Time one round (every image once) and append it to `rounds`."""
    start = time.perf_counter()
    for image in images:
        process(image)
    rounds.append(time.perf_counter() - start)


def run_scenario(scenario: Scenario, num_rounds: int) -> dict:
    images = make_images(scenario)
    ours = preset_processor(scenario.preset)
    out_height, out_width = ours.test_size(scenario.height, scenario.width)
    baseline = SegformerImageProcessorPil(  # same output size; mean / std on 0..1, after its rescale
        size={"height": out_height, "width": out_width},
        image_mean=[value / 255 for value in ours.image_mean],
        image_std=[value / 255 for value in ours.image_std],
    )

    def run_ours(image):
        return ours(image, return_tensors="pt")["pixel_values"]

    def run_baseline(image):
        return baseline(image, return_tensors="pt")["pixel_values"]

    ours_shape, baseline_shape = run_ours(images[0]).shape, run_baseline(images[0]).shape  # warm-up + check
    assert ours_shape == baseline_shape == (1, 3, out_height, out_width), (ours_shape, baseline_shape)
    ours_rounds, baseline_rounds = [], []
    for _ in range(num_rounds):
        time_round(run_ours, images, ours_rounds)
        time_round(run_baseline, images, baseline_rounds)
    ours_rate = len(images) / min(ours_rounds)
    baseline_rate = len(images) / min(baseline_rounds)
    median_speedup = statistics.median(baseline_rounds) / statistics.median(ours_rounds)
    return {
        "scenario": scenario.name,
        "input_size": [scenario.height, scenario.width],
        "output_size": [out_height, out_width],
        "images_per_round": len(images),
        "rounds": num_rounds,
        "ours_images_per_s": round(ours_rate, 2),
        "baseline_images_per_s": round(baseline_rate, 2),
        "speedup": round(ours_rate / baseline_rate, 2),
        "speedup_of_medians": round(median_speedup, 2),
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'scenario':<28} {'output':>10} {'ours img/s':>11} {'Segformer PIL img/s':>20} {'speedup':>8} "
        f"{'(medians)':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        output = "x".join(map(str, row["output_size"]))
        print(
            f"{row['scenario']:<28} {output:>10} {row['ours_images_per_s']:>11.1f} "
            f"{row['baseline_images_per_s']:>20.1f} {row['speedup']:>7.2f}x {row['speedup_of_medians']:>8.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds per processor")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave torch's default)")
    parser.add_argument("--output", default=None, help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows = [run_scenario(scenario, args.rounds) for scenario in SCENARIOS]
    print_table(rows)
    report = {
        "benchmark": "image preprocessing throughput, one PIL RGB image per call",
        "baseline": f"transformers.{SegformerImageProcessorPil.__name__} (PIL backend)",
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
    }
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
