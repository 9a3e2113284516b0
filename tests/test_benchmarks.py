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
    args = ["--device", "cpu", "--tiny", "--iterations", "1", "--warmup", "1", "--train-steps", "1"]
    stdout = run_script("bench_gpu.py", *args, "--models", "fpn_r50_512x1024_80k_cityscapes",
                        "fpn_r50_512x512_160k_ade20k", "--output", str(output))  # fmt: skip
    report = json.loads(output.read_text())
    assert report["device"] == "CPU" and report["tiny"]
    variants = {(row["model"], row["variant"]) for row in report["inference"]}
    assert len(variants) == 2 * 7 and all(row["fps"] > 0 and row["ratio_to_seed"] is None for row in report["inference"])
    assert {(row["model"], row["variant"]) for row in report["training"]} == {
        (model, variant) for model in ("fpn_r50_512x1024_80k_cityscapes", "fpn_r50_512x512_160k_ade20k")
        for variant in ("fp32", "fp16")
    }  # fmt: skip
    assert all(row["peak_memory_gib"] is None and row["step_s"] > 0 for row in report["training"])  # no CUDA counter
    assert "V100 fps (mmseg)" in stdout and "| 13.54" in stdout and "peak GiB" in stdout


def test_deployment_benchmark_runs_every_runtime(tmp_path):
    output = tmp_path / "deploy.json"
    paths = ["torch eager", "torch exact default", "ORT fp32", "ORT int8", "OpenVINO fp32"]
    stdout = run_script("bench_deploy.py", "--tiny", "--sizes", "64x128", "--threads", "1", "--repeats", "1",
                        "--workdir", str(tmp_path / "work"), "--paths", *paths, "--output", str(output))  # fmt: skip
    results = {row["path"]: row for row in json.loads(output.read_text())["results"]}
    assert list(results) == paths
    assert results["torch eager"]["ratio_to_eager"] == 1.0 and results["torch eager"]["max_abs_diff"] == 0.0
    for exact in ("torch exact default", "ORT fp32", "OpenVINO fp32"):  # the same network: the same logits
        assert results[exact]["max_abs_diff"] < 1e-3 and results[exact]["argmax_agreement"] > 0.99, exact
    assert all(row["median_s"] > 0 and row["peak_rss_mib"] > 0 for row in results.values())
    assert "Time / torch eager" in stdout and "Goals (issue 12)" in stdout


def test_data_benchmark_runs_on_the_cpu(tmp_path):
    """Small scenes, a tiny model, a few steps: every table row and both training paths are produced."""
    output = tmp_path / "data.json"
    stdout = run_script("bench_data.py", "--device", "cpu", "--quick", "--output", str(output))
    report = json.loads(output.read_text())
    paths = {"worker path", "TrainTransform (+ normalise, pad)", "decode-only path", "mmseg (cv2)"}
    assert {row["path"] for row in report["cpu"]} == paths and len(report["cpu"]) == 2 * len(paths)
    assert all(row["ms_per_sample"] > 0 for row in report["cpu"])
    equal, *rates = report["training"]
    assert equal["equal"] is True  # the device path's tensors are the worker path's
    assert [row["run"] for row in rates] == ["fpn-seg train, augment_on=workers", "fpn-seg train, augment_on=device",
                                             "pure step (pre-made device batch)"]  # fmt: skip
    assert all(row["steps_per_s"] > 0 for row in rates) and "x mmseg" in stdout
