"""The runtimes of an ONNX export beyond ONNX Runtime: OpenVINO (`OVModelForSemanticSegmentation`), the CPU
capability rules on recorded capability sets of the three CPU kinds the project meets (and the real probe here),
`runtime="auto"` (plan, probe, choice, cache) and the bad inputs of both runtimes. The runtimes on a trained model
(under `segment`, `fpn-seg predict`, the pipeline, int8 accuracy) are tested in test_deployment.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batch_norms, tiny_config
from PIL import Image

from fpn_seg import SemanticFPNForSemanticSegmentation, SemanticFPNImageProcessor, segment
from fpn_seg.deployment import (
    QUANTIZED_FILE_NAME,
    CpuCapabilities,
    OnnxFolderError,
    ORTModelForSemanticSegmentation,
    OVModelForSemanticSegmentation,
    PrecisionUnavailableError,
    RuntimeChoiceError,
    detect_cpu_capabilities,
    export_onnx,
    load_runtime,
)
from fpn_seg.deployment.cpu_capabilities import parse_cpuinfo
from fpn_seg.deployment.runtime_choice import (
    Candidate,
    ProbeResult,
    cache_path,
    check_against_reference,
    choose,
    plan_candidates,
    probe_candidates,
)
from fpn_seg.predict import main as predict_main

PARITY_TOLERANCE = 1e-4

# Recorded capability sets: /proc/cpuinfo's flags (the SIMD ones) and OpenVINO 2026.4's OPTIMIZATION_CAPABILITIES.
INTEL_AMX = CpuCapabilities(
    "Intel(R) Xeon(R) Platinum 8480+",
    frozenset("sse4_2 avx avx2 fma f16c avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 "
              "avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8".split()),  # fmt: skip
    ("BF16", "WINOGRAD", "FP32", "FP16", "INT8", "BIN", "EXPORT_IMPORT"),
)
AMD_ZEN4 = CpuCapabilities(
    "AMD EPYC 9R14",
    frozenset("sse4_2 avx avx2 fma f16c avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16".split()),
    ("BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"),
)
AMD_ZEN3 = CpuCapabilities(  # this project's 2-core machine in December 2026, as read there
    "AMD EPYC", frozenset("sse4_2 avx avx2 fma f16c".split()), ("FP32", "INT8", "BIN", "EXPORT_IMPORT")
)
ALL = ("torch", "onnxruntime", "openvino")


def pairs(candidates) -> list[str]:
    return [str(candidate) for candidate in candidates]


# ------------------------------------------------------------------------------------------------ capability rules


@pytest.mark.parametrize(
    "cpu, kind, bf16, vnni, description",
    [
        (INTEL_AMX, "AMX", True, True, "Intel(R) Xeon(R) Platinum 8480+ (AVX-512, bf16, VNNI, AMX)"),
        (AMD_ZEN4, "AVX512-BF16", True, True, "AMD EPYC 9R14 (AVX-512, bf16, VNNI; no AMX)"),
        (AMD_ZEN3, "AVX2", False, False, "AMD EPYC (AVX2; no AVX-512, no bf16, no VNNI, no AMX)"),
    ],
    ids=["intel-amx", "zen4", "zen3"],
)
def test_capabilities_of_the_three_cpu_kinds(cpu, kind, bf16, vnni, description):
    assert (cpu.kind, cpu.bf16, cpu.openvino_bf16, cpu.onednn_bf16, cpu.vnni) == (kind, bf16, bf16, bf16, vnni)
    assert cpu.describe() == description
    without_openvino = CpuCapabilities(cpu.name, cpu.flags, None)  # the flags alone say the same
    assert without_openvino.bf16 == bf16 and not without_openvino.openvino_bf16


@pytest.mark.parametrize(
    "cpu, onnx_plan, torch_plan",
    [
        (INTEL_AMX, ["ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO fp32", "OpenVINO bf16", "OpenVINO int8"],
         ["torch fp32", "torch bf16"]),
        (AMD_ZEN4, ["ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO fp32", "OpenVINO bf16", "OpenVINO int8"],
         ["torch fp32", "torch bf16"]),
        (AMD_ZEN3, ["ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO fp32", "OpenVINO int8"], ["torch fp32"]),
    ],
    ids=["intel-amx", "zen4", "zen3"],
)  # fmt: skip
def test_auto_plans_what_each_cpu_kind_runs(cpu, onnx_plan, torch_plan):
    candidates, skipped = plan_candidates(("onnx",), ("fp32", "bf16", "int8"), ALL, cpu)
    assert pairs(candidates) == onnx_plan
    assert [(str(r.candidate), r.note) for r in skipped] == (
        [] if cpu.bf16 else [("OpenVINO bf16", "no bf16 kernels for this CPU")]
    )
    candidates, skipped = plan_candidates(("torch",), (), ALL, cpu)
    assert pairs(candidates) == torch_plan
    assert [str(r.candidate) for r in skipped] == ([] if cpu.bf16 else ["torch bf16"])
    # --precision fp32 keeps auto to the exact paths; int8 and bf16 to theirs
    exact, _ = plan_candidates(("onnx",), ("fp32", "bf16", "int8"), ALL, cpu, precision="fp32")
    assert pairs(exact) == ["ONNX Runtime fp32", "OpenVINO fp32"]
    int8, _ = plan_candidates(("onnx",), ("fp32", "bf16", "int8"), ALL, cpu, precision="int8")
    assert pairs(int8) == ["ONNX Runtime int8", "OpenVINO int8"]


def test_auto_plans_without_int8_file_or_openvino():
    candidates, skipped = plan_candidates(("onnx",), ("fp32", "bf16"), ("torch", "onnxruntime"), AMD_ZEN4)
    assert pairs(candidates) == ["ONNX Runtime fp32"]
    notes = {str(r.candidate): r.note for r in skipped}
    assert notes["ONNX Runtime int8"] == "no model_quantized.onnx: fpn-seg export --int8"
    assert notes["OpenVINO fp32"] == "not installed: pip install 'fpn_seg[openvino]'"
    with pytest.raises(ValueError, match="precision must be one of"):
        plan_candidates(("onnx",), (), ALL, AMD_ZEN3, precision="fp16")


def test_the_capability_probe_reads_this_machine():
    cpu = detect_cpu_capabilities()
    if Path("/proc/cpuinfo").is_file():
        name, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert cpu.flags == flags and cpu.name == name
    import openvino

    assert cpu.openvino == tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert cpu.kind in ("AMX", "AVX512-BF16", "BF16", "AVX512", "AVX2", "other")
    print(f"this machine: {cpu.describe()} -> {cpu.kind}")


# ------------------------------------------------------------------------------------------------ choice (pure)


def result(name: str, status="ok", seconds=None, note="") -> ProbeResult:
    runtime, precision = {"ORT": "onnxruntime", "OV": "openvino", "torch": "torch"}[name.split()[0]], name.split()[1]
    return ProbeResult(runtime, precision, status, seconds, note=note)


def test_choose_takes_the_fastest_path_that_passed_and_keeps_exact_when_it_costs_little():
    results = [result("ORT fp32", seconds=1.0), result("OV int8", seconds=0.4), result("ORT int8", seconds=0.45),
               result("OV bf16", "skipped", note="no bf16 kernels for this CPU"),
               result("OV fp32", "failed", note="cannot compile")]  # fmt: skip
    choice = choose(results, (1, 3, 64, 128), "AMD EPYC (AVX2)")
    assert (choice.runtime, choice.precision) == ("openvino", "int8") and not choice.exact
    assert choice.summary().startswith("OpenVINO int8: the fastest correct path on a 64x128 probe on AMD EPYC (AVX2) ")
    assert "skipped: OpenVINO bf16 (no bf16 kernels for this CPU)" in choice.reason
    assert "failed: OpenVINO fp32 (cannot compile)" in choice.reason and "\n" not in choice.reason
    # a failed path is never chosen, however fast it was
    results[1] = result("OV int8", "failed", seconds=0.1, note="the float32 label on only 50% of the pixels")
    assert str(Candidate(choose(results).runtime, choose(results).precision)) == "ONNX Runtime int8"
    # an approximate path less than MIN_GAIN faster than the fastest exact one: the exact one is kept
    close = choose([result("ORT fp32", seconds=1.0), result("ORT int8", seconds=0.97)])
    assert close.precision == "fp32" and "exact kept" in close.reason
    with pytest.raises(RuntimeChoiceError, match="found nothing that runs here .*failed: ONNX Runtime fp32 .broken"):
        choose([result("ORT fp32", "failed", note="broken")])


def test_the_probe_check_rejects_wrong_logits():
    reference = torch.randn(1, 4, 8, 8)
    exact, int8 = Candidate("onnxruntime", "fp32"), Candidate("openvino", "int8")
    assert check_against_reference(exact, reference + 1e-5, reference).status == "ok"
    assert "differs from the float32 reference" in check_against_reference(exact, reference + 0.5, reference).note
    assert check_against_reference(int8, reference * 1.01, reference).status == "ok"
    assert "the float32 label on only" in check_against_reference(int8, -reference, reference).note
    assert check_against_reference(int8, reference * float("nan"), reference).note == "non-finite logits"
    assert "expected (1, 4, 8, 8)" in check_against_reference(int8, reference[:, :3], reference).note
    assert "no float32 reference" in check_against_reference(int8, reference, None).note


def test_the_probe_never_keeps_a_path_that_fails():
    pixel_values = torch.randn(1, 3, 8, 8)
    good = lambda x: torch.ones(1, 2, 8, 8)  # noqa: E731

    def load(candidate):
        if candidate.runtime == "openvino":
            raise RuntimeError("compile failed\nwith details")
        return good if candidate.precision == "fp32" else (lambda x: torch.full((1, 2, 8, 8), float("nan")))

    candidates = [Candidate("onnxruntime", "fp32"), Candidate("onnxruntime", "int8"), Candidate("openvino", "int8")]
    results, runners = probe_candidates(candidates, load, pixel_values, rounds=2)
    assert [(r.status, r.note) for r in results] == [("ok", ""), ("failed", "non-finite logits"),
                                                     ("failed", "compile failed")]  # fmt: skip
    assert list(runners) == [candidates[0]] and results[0].seconds is not None


# ------------------------------------------------------------------------------------------------ OpenVINO


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model (random BatchNorm statistics) saved with its processor, and its ONNX export."""
    workdir = tmp_path_factory.mktemp("runtimes")
    model = randomise_batch_norms(SemanticFPNForSemanticSegmentation(tiny_config())).eval()
    model_dir, onnx_dir = workdir / "model", workdir / "onnx"
    model.save_pretrained(model_dir)
    SemanticFPNImageProcessor.from_model_config(model.config, scale=(96, 64)).save_pretrained(model_dir)
    export_onnx(model_dir, onnx_dir)
    return model, model_dir, onnx_dir


@pytest.mark.parametrize("static_shapes", [2, 0], ids=["static-copies", "dynamic-only"])
def test_openvino_fp32_matches_the_torch_model(tiny, static_shapes):
    model, _, onnx_dir = tiny
    openvino_model = OVModelForSemanticSegmentation.from_pretrained(onnx_dir, static_shapes=static_shapes)
    assert (openvino_model.device, openvino_model.dtype, openvino_model.training) == (torch.device("cpu"),
                                                                                      torch.float32, False)
    for batch, height, width in [(1, 64, 96), (2, 97, 130), (1, 64, 96), (1, 33, 47), (1, 64, 96)]:
        pixel_values = torch.randn(batch, 3, height, width)
        with torch.inference_mode():
            expected = model(pixel_values=pixel_values).logits
        logits = openvino_model(pixel_values=pixel_values).logits
        assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
        assert logits.shape == expected.shape == (batch, model.config.num_labels, height, width)
        assert (logits - expected).abs().max().item() <= PARITY_TOLERANCE
    # the shape seen three times got its own static compile (at most `static_shapes` of them)
    assert list(openvino_model._static) == ([(1, 3, 64, 96)] if static_shapes else [])


def test_openvino_runs_a_padded_batch_like_the_torch_model(tiny):
    model, model_dir, onnx_dir = tiny
    processor = SemanticFPNImageProcessor.from_pretrained(model_dir)
    images = [np.random.default_rng(i).integers(0, 255, (40 + 8 * i, 60, 3), dtype=np.uint8) for i in range(2)]
    inputs = processor(images=images, return_tensors="pt")
    assert "pixel_mask" in inputs
    with torch.inference_mode():
        expected = model(**inputs).logits
    logits = OVModelForSemanticSegmentation.from_pretrained(onnx_dir)(**inputs).logits
    assert (logits - expected).abs().max().item() <= PARITY_TOLERANCE
    labels = segment(OVModelForSemanticSegmentation.from_pretrained(onnx_dir), processor, images, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(labels, segment(model, processor, images)))


def test_bf16_is_refused_where_the_cpu_has_no_bf16_and_computed_where_it_has(tiny):
    _, _, onnx_dir = tiny
    cpu = detect_cpu_capabilities()
    if not cpu.openvino_bf16:
        with pytest.raises(PrecisionUnavailableError, match=r"precision bf16 was asked for '.*onnx', but this CPU, .*"
                           r"no bfloat16 kernels in OpenVINO .* Use --precision fp32 \(exact\) or int8"):  # fmt: skip
            OVModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="bf16")
    else:  # a CPU with bf16 kernels: the model computes in bf16 (close to, not equal to, float32)
        model = OVModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="bf16")
        assert str(model._dynamic.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'bfloat16'>", "bf16")
        assert torch.isfinite(model(torch.randn(1, 3, 32, 32)).logits).all()
    with pytest.raises(PrecisionUnavailableError, match="ONNX Runtime runs fp32 and int8, not bf16; bf16 runs on OpenV"):
        ORTModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="bf16")


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_folders_give_one_line_errors_naming_folder_and_remedy(tiny, tmp_path):
    _, model_dir, onnx_dir = tiny
    with pytest.raises(OnnxFolderError, match=f"has no {QUANTIZED_FILE_NAME} .* --int8 --calibration-images"):
        OVModelForSemanticSegmentation.from_pretrained(onnx_dir, precision="int8")
    with pytest.raises(OnnxFolderError, match="holds a torch model folder .*, not an ONNX export"):
        OVModelForSemanticSegmentation.from_pretrained(model_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((onnx_dir / name).read_bytes())
    (broken / "model.onnx").write_bytes((onnx_dir / "model.onnx").read_bytes()[:2000])  # a truncated export
    for runtime in (OVModelForSemanticSegmentation, ORTModelForSemanticSegmentation):
        with pytest.raises(OnnxFolderError, match=rf"model.onnx: {runtime.runtime_name} cannot load it \(.*\)\. Export "
                                                  "the folder again with fpn-seg export, or use another --runtime"):
            runtime.from_pretrained(broken)
    with pytest.raises(ValueError, match="num_threads must be a positive int"):
        OVModelForSemanticSegmentation.from_pretrained(onnx_dir, num_threads=0)


def _predict_error(capsys, *args) -> str:
    capsys.readouterr()
    assert predict_main([str(arg) for arg in args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("fpn-seg predict: error: "), error
    return error


def test_predict_refuses_what_a_runtime_cannot_serve(tiny, tmp_path, capsys):
    _, model_dir, onnx_dir = tiny
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    out = ["-o", tmp_path / "out"]
    error = _predict_error(capsys, onnx_dir, image, *out, "--runtime", "openvino", "--precision", "int8")
    assert f"(--runtime openvino, --precision int8): '{onnx_dir}' has no {QUANTIZED_FILE_NAME}" in error
    error = _predict_error(capsys, onnx_dir, image, *out, "--runtime", "torch")
    assert "is an ONNX export (model.onnx), not a torch model folder" in error
    error = _predict_error(capsys, model_dir, image, *out, "--int8")
    assert "int8 runs on an ONNX export with model_quantized.onnx" in error and "fpn-seg export" in error
    error = _predict_error(capsys, model_dir, image, *out, "--runtime", "auto", "--precision", "int8")
    assert "runtime auto has nothing to run" in error and "fpn-seg export MODEL --output-dir OUT --int8" in error
    if not detect_cpu_capabilities().openvino_bf16:
        error = _predict_error(capsys, onnx_dir, image, *out, "--runtime", "openvino", "--bf16")
        assert "precision bf16 was asked for" in error and "Use --precision fp32" in error
    for flags, message in [(["--onnx", "--runtime", "openvino"], "--onnx means --runtime onnxruntime; it contradicts"),
                           (["--runtime", "openvino", "--device", "cuda"], "--device apply to the torch runtime"),
                           (["--runtime", "openvino", "--no-optimize"], "--no-optimize apply to the torch runtime")]:
        with pytest.raises(SystemExit) as exited:
            predict_main([str(onnx_dir), str(image), "-o", str(tmp_path / "out"), *flags])
        assert exited.value.code == 2 and message in capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ auto


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FPN_SEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_chooses_a_path_that_passed_its_probe_and_caches_it(tiny, cache_dir):
    _, model_dir, onnx_dir = tiny
    model, processor, choice = load_runtime(onnx_dir, "auto")
    ok = [r for r in choice.probes if r.status == "ok"]
    assert (choice.runtime, choice.precision) in [(r.runtime, r.precision) for r in ok]
    assert str(Candidate(choice.runtime, choice.precision)) == str(min(ok, key=lambda r: r.seconds).candidate)
    assert type(model).__name__ == {"onnxruntime": "ORTModelForSemanticSegmentation",
                                    "openvino": "OVModelForSemanticSegmentation"}[choice.runtime]  # fmt: skip
    assert not choice.cached and list(processor.scale) == [96, 64]
    print(f"auto on this machine ({detect_cpu_capabilities().describe()}): {choice.summary()}")
    entry = json.loads(cache_path().read_text())
    assert cache_path().parent == cache_dir and len(entry) == 1
    again = load_runtime(onnx_dir, "auto")[2]
    assert again.cached and (again.runtime, again.precision) == (choice.runtime, choice.precision)
    _, _, torch_choice = load_runtime(model_dir, "auto", precision="fp32")
    assert (torch_choice.runtime, torch_choice.precision) == ("torch", "fp32")


def test_auto_skips_a_file_that_fails_and_never_picks_it(tiny, tmp_path, cache_dir):
    _, _, onnx_dir = tiny
    folder = tmp_path / "onnx"
    folder.mkdir()
    for path in onnx_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / QUANTIZED_FILE_NAME).write_bytes(b"not an onnx file")  # every int8 path fails to load
    model, _, choice = load_runtime(folder, "auto")
    statuses = {str(r.candidate): (r.status, r.note) for r in choice.probes}
    assert statuses["ONNX Runtime int8"][0] == statuses["OpenVINO int8"][0] == "failed"
    assert "cannot load it" in statuses["OpenVINO int8"][1]
    assert choice.precision != "int8"  # never a path that failed (fp32, or bf16 where the CPU has it and it wins)
    assert "failed: ONNX Runtime int8" in choice.reason and "OpenVINO int8 (" in choice.reason
    with pytest.raises(RuntimeChoiceError, match="found nothing that runs here .*ONNX Runtime int8.*OpenVINO int8"):
        load_runtime(folder, "auto", precision="int8")


def test_predict_with_auto_says_what_it_chose(tiny, tmp_path, cache_dir, capsys):
    _, model_dir, onnx_dir = tiny
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    assert predict_main([str(onnx_dir), str(image), "-o", str(tmp_path / "out"), "--runtime", "auto",
                         "--precision", "fp32"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fpn-seg predict: runtime")]
    assert len(lines) == 1 and lines[0].startswith("fpn-seg predict: runtime auto chose ")
    _, _, choice = load_runtime(onnx_dir, "auto", precision="fp32")
    assert f"chose {choice.summary()}" in lines[0] and choice.exact  # the cached choice: the same line
    saved = np.asarray(Image.open(tmp_path / "out" / "image_label.png")).astype(np.int64)
    model, processor, _ = load_runtime(model_dir, "torch")
    assert torch.equal(torch.from_numpy(saved), segment(model, processor, Image.open(image))[0])  # exact: same labels


def test_the_core_works_without_openvino(tiny, tmp_path):
    """With openvino unimportable, `import fpn_seg` and the other runtimes work; OpenVINO names its extra and auto
    skips it."""
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(image)
    code = f"""
import sys
sys.modules["openvino"] = None  # as if not installed
import fpn_seg
from fpn_seg.deployment import OVModelForSemanticSegmentation, load_runtime, detect_cpu_capabilities
assert detect_cpu_capabilities().openvino is None
try:
    OVModelForSemanticSegmentation.from_pretrained({str(tiny[2])!r})
except ImportError as error:
    print("refused:", error)
model, processor, choice = load_runtime({str(tiny[2])!r}, "auto", use_cache=False)
print("auto:", choice.summary())
from fpn_seg.predict import main
assert main([{str(tiny[2])!r}, {str(image)!r}, "-o", {str(tmp_path / 'out')!r}, "--runtime", "openvino"]) == 2
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "refused: OpenVINO inference needs the openvino package, which is not installed" in result.stdout
    assert "pip install 'fpn_seg[openvino]'" in result.stdout
    assert "auto: ONNX Runtime fp32" in result.stdout and "not installed: pip install 'fpn_seg[openvino]'" in result.stdout
    assert "(--runtime openvino): OpenVINO inference needs the openvino package" in result.stderr


def test_openvino_models_freed_in_any_order_leave_signals_working(tiny):
    """OpenVINO's CPU plugin gives each compiled model its own signal stack and puts the previous one back when the
    model is freed, which leaves a freed stack in place when models are not freed last-in first-out (runtime auto's
    probe holds several): the next signal with a Python handler then killed the process (SIGSEGV). In a subprocess:
    two models freed first-in first-out, then a signal with a Python handler, handled."""
    code = f"""
import gc, os, signal
from fpn_seg.deployment import OVModelForSemanticSegmentation
from fpn_seg.deployment.signal_stack import current_signal_stack
before = current_signal_stack()
first = OVModelForSemanticSegmentation.from_pretrained({str(tiny[2])!r})
second = OVModelForSemanticSegmentation.from_pretrained({str(tiny[2])!r})
del first; gc.collect()
del second; gc.collect()
print("stack kept:", current_signal_stack() == before)
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled:", handled)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])  # -11 without the fix
    assert "stack kept: True" in result.stdout and "handled: [True]" in result.stdout
