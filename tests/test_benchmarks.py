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
