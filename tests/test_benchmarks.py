"""The benchmark scripts run end to end (tiny models, one repeat) and write the figures they print; speed itself is
measured by running them, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=BENCHMARKS, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    output = tmp_path / "gpu.json"
    stdout = run_script("bench_gpu.py", "--device", "cpu", "--quick", "--output", str(output))
    report = json.loads(output.read_text())
    assert report["device"] == "CPU" and report["quick"]
    latency = {(row["model"], row["path"]): row for row in report["latency"]}
    assert {path for _, path in latency} == {"eager", "folded", "eager graph", "folded graph", "folded fp16 graph",
                                            "folded bf16 graph"}  # compile: CUDA runs only  # fmt: skip
    for (model, path), row in latency.items():
        if "graph" in path:
            assert row["wall_ms"] is None and row["note"] == "CUDA graphs need a GPU"
        else:
            assert row["wall_ms"] > 0 and row["kernel_ms"] is None and row["note"] == "", (model, path)
    assert report["predict"]["images_per_s"]["batch 2, fp32"] > 0 and report["predict"]["plain_loop_images_per_s"] > 0
    assert "skipped" in report["agreement"]  # no demo model next to the benchmarks
    assert [row["variant"] for row in report["training"]] == ["fp32", "fp16"]
    assert all(row["peak_memory_gib"] is None and row["step_s"] > 0 for row in report["training"])  # no CUDA counter
    cpu = report["cpu-predict"]
    assert cpu["ratio"] == cpu["predict_s_per_image"] / cpu["plain_s_per_image"] > 0
    assert "V100 fps (mmseg)" in stdout and "| 13.54" in stdout and "ratio (goal <= 0.6)" in stdout


def test_deployment_benchmark_runs_every_runtime(tmp_path):
    output = tmp_path / "deploy.json"
    paths = ["torch eager", "torch exact default", "ORT fp32", "ORT int8", "OV fp32", "OV bf16", "OV int8",
             "peer ORT fp32", "peer OpenVINO fp32"]  # fmt: skip
    stdout = run_script("bench_deploy.py", "--tiny", "--sizes", "64x128", "--threads", "1", "--repeats", "1",
                        "--workdir", str(tmp_path / "work"), "--paths", *paths, "--output", str(output))  # fmt: skip
    report = json.loads(output.read_text())
    results = {row["path"]: row for row in report["results"]}
    assert list(results) == paths
    assert results["torch eager"]["ratio_to_eager"] == 1.0 and results["torch eager"]["max_abs_diff"] == 0.0
    for exact in ("torch exact default", "ORT fp32", "OV fp32", "peer ORT fp32", "peer OpenVINO fp32"):
        assert results[exact]["max_abs_diff"] < 1e-3 and results[exact]["argmax_agreement"] > 0.99, exact
    ran = {path: row for path, row in results.items() if row["note"] == "" or path != "OV bf16"}
    if "bf16 kernels" in results["OV bf16"]["note"]:  # a CPU without bf16: listed as such, not timed
        assert results["OV bf16"]["median_s"] != results["OV bf16"]["median_s"]  # NaN
    assert all(row["median_s"] > 0 and row["median_cpu_s"] > 0 and row["peak_rss_mib"] > 0 for row in ran.values())
    (goal,) = report["goal"].values()
    assert goal["peer"] in ("peer ORT fp32", "peer OpenVINO fp32") and goal["ratio"] > 0
    assert "Time / torch eager, wall-clock" in stdout and "Goal (issue 22)" in stdout


def test_data_benchmark_runs_on_the_cpu(tmp_path):
    """Small scenes, a tiny model, a few steps: every table row and both training paths are produced."""
    output = tmp_path / "data.json"
    stdout = run_script("bench_data.py", "--device", "cpu", "--quick", "--output", str(output))
    report = json.loads(output.read_text())
    paths = {"worker path", "TrainTransform (+ normalise, pad)", "device path's worker share", "mmseg (cv2)"}
    assert {row["path"] for row in report["cpu"]} == paths and len(report["cpu"]) == 2 * len(paths)
    assert all(row["ms_per_sample"] > 0 for row in report["cpu"])
    equal, *rates = report["training"]
    assert equal["equal"] is True  # the device path's tensors are the worker path's
    assert [row["run"] for row in rates] == ["fpn-seg train, augment_on=workers", "fpn-seg train, augment_on=device",
                                             "pure step (pre-made device batch)"]  # fmt: skip
    assert all(row["steps_per_s"] > 0 for row in rates) and "x mmseg" in stdout
