"""`runtime="auto"`: the fastest correct runtime and precision for this machine, chosen by a short measured probe on
the model, with the reason in one line.

1. **Plan** ([`plan_candidates`], pure): which (runtime, precision) pairs can run the folder here: what the folder
   holds (a torch model; an ONNX export with or without `model_quantized.onnx`), which runtimes are installed, what
   the CPU computes natively ([`CpuCapabilities`]: bf16 only where the runtime has bfloat16 kernels for this CPU), and
   what the user asked for: `precision="fp32"` keeps auto to the **exact** paths (float32 arithmetic: the torch
   model's logits up to float rounding), `"bf16"` / `"int8"` to that precision, None allows all.
2. **Probe** ([`probe_candidates`]): each candidate is loaded and run on one street scene of up to 512x1024 (the
   model's test scale, capped); it fails its probe when it does not load, raises, returns non-finite or misshapen
   logits, or disagrees with the float32 reference (exact paths: max |logit difference| above `EXACT_TOLERANCE` of
   the logits' scale; bf16 / int8: the same argmax on fewer than `MIN_AGREEMENT` of the pixels). The survivors are
   timed round-robin (`PROBE_ROUNDS` calls each, wall-clock medians).
3. **Choose** ([`choose`]): the fastest survivor; an approximate one (bf16, int8) only when it beats the fastest exact
   one by at least `MIN_GAIN`, so that exactness is kept where it costs (almost) nothing. A path that failed its probe
   is never chosen.

The choice is cached per (folder files, machine, runtime versions, request) in `~/.cache/fpn_seg/runtime_choices.json`
(`FPN_SEG_CACHE_DIR` moves it); a cached choice that no longer loads is probed again.
"""

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_file_atomically
from .cpu_capabilities import CpuCapabilities
from .onnx_folder import PRECISIONS

RUNTIMES = ("torch", "onnxruntime", "openvino")
RUNTIME_NAMES = {"torch": "torch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
RUNTIME_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}
EXACT_PRECISION = "fp32"
EXACT_TOLERANCE = 1e-3  # max |logit difference| of an exact path, times max(1, max |reference logit|)
MIN_AGREEMENT = 0.95  # pixels with the float32 argmax, for bf16 and int8 on the probe scene
MIN_GAIN = 0.05  # an approximate path must be this much faster than the fastest exact one to be chosen
PROBE_ROUNDS = 3
PROBE_MAX_SIDE = 512  # the probe scene's short side: at most 512 (x 1024)
CACHE_FILE_NAME = "runtime_choices.json"


class RuntimeChoiceError(ValueError):
    """No runtime can serve the request here (every candidate unavailable or failed); the message lists why."""


@dataclass(frozen=True)
class Candidate:
    """One way to run a model: a runtime ("torch", "onnxruntime", "openvino") at a precision ("fp32", "bf16",
    "int8")."""

    runtime: str
    precision: str

    @property
    def exact(self) -> bool:
        return self.precision == EXACT_PRECISION

    def __str__(self) -> str:
        return f"{RUNTIME_NAMES[self.runtime]} {self.precision}"


@dataclass
class ProbeResult:
    """What the plan or the probe found for one candidate: `status` "ok", "skipped" (not runnable here; never loaded)
    or "failed" (loaded or ran, and failed its probe); `seconds` the median probe call; `note` why, when not ok."""

    runtime: str
    precision: str
    status: str
    seconds: float | None = None
    agreement: float | None = None  # fraction of probe pixels with the float32 reference's argmax
    max_abs_diff: float | None = None
    note: str = ""

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.runtime, self.precision)


@dataclass
class RuntimeChoice:
    """The runtime and precision a model runs with, and why (`reason`: one line; `probes`: every candidate)."""

    runtime: str
    precision: str
    reason: str
    probes: list[ProbeResult] = field(default_factory=list)
    cached: bool = False

    @property
    def autocast_bf16(self) -> bool:
        """Whether the caller runs the (torch) model under bfloat16 autocast: `segment(..., bf16=True)`."""
        return self.runtime == "torch" and self.precision == "bf16"

    @property
    def exact(self) -> bool:
        return self.precision == EXACT_PRECISION

    def summary(self) -> str:
        """One line: what runs, and why."""
        return f"{Candidate(self.runtime, self.precision)}: {self.reason}"

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "reason": self.reason,
                "probes": [asdict(probe) for probe in self.probes]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict, cached: bool = False) -> "RuntimeChoice":
        probes = [ProbeResult(**probe) for probe in data.get("probes", [])]
        return cls(data["runtime"], data["precision"], data["reason"], probes, cached)


# ------------------------------------------------------------------------------------------------ 1. plan (pure)


def plan_candidates(
    folder_kinds: Sequence[str],
    onnx_precisions: Sequence[str],
    installed: Sequence[str],
    capabilities: CpuCapabilities,
    precision: str | None = None,
) -> tuple[list[Candidate], list[ProbeResult]]:
    """The candidates auto may probe, and those it skips with the reason (both in `RUNTIMES` x `PRECISIONS` order).

    Args:
        folder_kinds: what the model source holds: "torch" (a model folder or hub id) and / or "onnx" (an export).
        onnx_precisions: the precisions whose file the ONNX folder holds (`folder_precisions`).
        installed: the runtimes that can be imported ("torch" always).
        capabilities: the CPU's (`detect_cpu_capabilities()`, or a recorded set).
        precision: None (any), or the one precision the user asked for ("fp32": exact paths only).
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)} or None; got {precision!r}.")
    candidates, skipped = [], []
    for runtime in RUNTIMES:
        if runtime == "torch" and "torch" not in folder_kinds:
            continue
        if runtime != "torch" and "onnx" not in folder_kinds:
            continue
        for wanted in PRECISIONS:
            if precision is not None and wanted != precision:
                continue
            reason = _unavailable(runtime, wanted, onnx_precisions, installed, capabilities)
            if reason is None:
                candidates.append(Candidate(runtime, wanted))
            elif reason:  # "" marks pairs that do not exist at all (torch int8, ONNX Runtime bf16): not listed
                skipped.append(ProbeResult(runtime, wanted, "skipped", note=reason))
    return candidates, skipped


def _unavailable(runtime, precision, onnx_precisions, installed, capabilities: CpuCapabilities) -> str | None:
    """Why `runtime` cannot run `precision` here (None: it can; "": it never does)."""
    if (runtime, precision) in (("torch", "int8"), ("onnxruntime", "bf16")):
        return ""
    if runtime not in installed:
        return f"not installed: pip install 'fpn_seg[{RUNTIME_EXTRAS[runtime]}]'"
    if runtime != "torch" and precision not in onnx_precisions:
        return "no model_quantized.onnx: fpn-seg export --int8" if precision == "int8" else "no model.onnx"
    if precision == "bf16" and runtime == "openvino" and not capabilities.openvino_bf16:
        return "no bf16 kernels for this CPU"
    if precision == "bf16" and runtime == "torch" and not capabilities.onednn_bf16:
        return "no native bf16 on this CPU: emulated, slower than float32"
    return None


# ------------------------------------------------------------------------------------------------ 2. probe


def probe_pixel_values(scale: Sequence[int] | None) -> torch.Tensor:
    """The probe's input: a synthetic street scene (`fpn_seg.data.synthetic`) at the test scale's short side capped at
    `PROBE_MAX_SIDE`, twice as wide, normalised with mmseg's ImageNet mean and std: (1, 3, h, 2h) float32."""
    from ..data.synthetic import render_street_scene

    height = min(min(scale) if scale else PROBE_MAX_SIDE, PROBE_MAX_SIDE)
    image, _ = render_street_scene(np.random.default_rng(0), size=(height, 2 * height))  # (h, 2h, 3) uint8
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    return ((torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std)[None].contiguous()


def check_against_reference(candidate: Candidate, logits: torch.Tensor, reference: torch.Tensor | None) -> ProbeResult:
    """The verdict on one candidate's probe logits (B, N, h, w) against the float32 reference's."""
    result = ProbeResult(candidate.runtime, candidate.precision, "ok")
    if logits.shape != (reference.shape if reference is not None else logits.shape) or logits.ndim != 4:
        return _failed(result, f"logits of shape {tuple(logits.shape)}, expected {tuple(reference.shape)}")
    if not bool(torch.isfinite(logits).all()):
        return _failed(result, "non-finite logits")
    if reference is None:
        return _failed(result, "no float32 reference loaded to check it against") if not candidate.exact else result
    result.max_abs_diff = float((logits - reference).abs().max())
    result.agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    scale = max(1.0, float(reference.abs().max()))
    if candidate.exact and result.max_abs_diff > EXACT_TOLERANCE * scale:
        return _failed(result, f"differs from the float32 reference by {result.max_abs_diff:.2g} (> {EXACT_TOLERANCE:g}"
                               f" x {scale:.3g})")  # fmt: skip
    if not candidate.exact and result.agreement < MIN_AGREEMENT:
        return _failed(result, f"the float32 label on only {100 * result.agreement:.1f}% of the probe's pixels "
                               f"(needs {100 * MIN_AGREEMENT:.0f}%)")  # fmt: skip
    return result


def _failed(result: ProbeResult, note: str) -> ProbeResult:
    result.status, result.note = "failed", note
    return result


Runner = Callable[[torch.Tensor], torch.Tensor]  # pixel_values (1, 3, h, w) -> float32 logits (1, N, h, w)


def probe_candidates(
    candidates: Sequence[Candidate],
    load: Callable[[Candidate], Runner],
    pixel_values: torch.Tensor,
    reference: Runner | None = None,
    rounds: int = PROBE_ROUNDS,
) -> tuple[list[ProbeResult], dict[Candidate, Runner]]:
    """Load and check every candidate (see the module docstring), then time the survivors round-robin.

    `load(candidate)` returns a runner or raises (the candidate then fails with the error's first line). The float32
    reference is the first exact candidate that passes, else `reference` (a runner loaded for checking only).
    Returns the results (candidates' order) and the runners that passed, by candidate.
    """
    results, runners, outputs = {}, {}, {}
    for candidate in candidates:
        try:
            runner = load(candidate)
            with torch.inference_mode():
                outputs[candidate] = runner(pixel_values).float()  # the warm-up call
            runners[candidate] = runner
        except Exception as error:  # any load or run failure: the candidate fails its probe, the others go on
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            results[candidate] = ProbeResult(candidate.runtime, candidate.precision, "failed", note=message[:300])
    exact = [candidate for candidate in runners if candidate.exact]
    reference_logits = outputs[exact[0]] if exact else None
    if reference_logits is None and reference is not None:
        try:
            with torch.inference_mode():
                reference_logits = reference(pixel_values).float()
        except Exception:  # no reference: approximate candidates fail their check below, with that reason
            reference_logits = None
    for candidate in list(runners):
        results[candidate] = check_against_reference(candidate, outputs[candidate], reference_logits)
        if results[candidate].status != "ok":
            del runners[candidate]
    times: dict[Candidate, list[float]] = {candidate: [] for candidate in runners}
    for round_index in range(rounds if len(runners) > 1 else 1):
        for candidate in list(times):
            start = time.perf_counter()
            with torch.inference_mode():
                runners[candidate](pixel_values)
            times[candidate].append(time.perf_counter() - start)
        if round_index == 0 and len(times) > 2:  # drop the clearly slower ones early (more than twice the fastest)
            fastest = min(values[0] for values in times.values())
            for candidate in [c for c, values in times.items() if values[0] > 2 * fastest]:
                results[candidate].seconds = times.pop(candidate)[0]
    for candidate, values in times.items():
        results[candidate].seconds = statistics.median(values)
    return [results[candidate] for candidate in candidates], runners


# ------------------------------------------------------------------------------------------------ 3. choose


def choose(results: Sequence[ProbeResult], probe_shape: Sequence[int] | None = None, cpu: str = "") -> RuntimeChoice:
    """The fastest candidate that passed its probe (an approximate one only when `MIN_GAIN` faster than the fastest
    exact one), with a one-line reason naming the others and the `cpu`; `RuntimeChoiceError` when none passed."""
    passed = sorted((r for r in results if r.status == "ok" and r.seconds is not None), key=lambda r: r.seconds)
    if not passed:
        raise RuntimeChoiceError(f"runtime auto found nothing that runs here ({_grouped_notes(results)}).")
    best = passed[0]
    exact = [r for r in passed if r.candidate.exact]
    kept_exact = ""
    if not best.candidate.exact and exact and best.seconds > (1 - MIN_GAIN) * exact[0].seconds:
        kept_exact = f"; exact kept: {best.candidate} was less than {100 * MIN_GAIN:.0f}% faster"
        best = exact[0]
    where = f"a {probe_shape[-2]}x{probe_shape[-1]} probe" if probe_shape else "the probe"
    timed = ", ".join([f"{best.seconds:.3g} s"] + [f"{r.candidate} {r.seconds:.3g} s" for r in passed if r is not best])
    not_ok = [r for r in results if r.status != "ok"]
    reason = (f"the fastest correct path on {where}{f' on {cpu}' if cpu else ''} ({timed}{kept_exact})"
              + (f"; {_grouped_notes(not_ok)}" if not_ok else ""))  # fmt: skip
    return RuntimeChoice(best.runtime, best.precision, reason, list(results))


def _grouped_notes(results: Sequence[ProbeResult]) -> str:
    """'skipped: OpenVINO bf16 (no bf16 kernels on this CPU); failed: ONNX Runtime int8 (...)', same notes grouped."""
    parts = []
    for status in ("failed", "skipped"):
        notes: dict[str, list[str]] = {}
        for result in results:
            if result.status == status:
                notes.setdefault(result.note, []).append(str(result.candidate))
        if notes:
            parts.append(f"{status}: " + "; ".join(f"{', '.join(names)} ({note})" for note, names in notes.items()))
    return "; ".join(parts) or "no runtime can run this folder"


# ------------------------------------------------------------------------------------------------ the cache


def cache_path() -> Path:
    """Where probed choices are kept: `$FPN_SEG_CACHE_DIR/runtime_choices.json`, else `~/.cache/fpn_seg/...`."""
    root = os.environ.get("FPN_SEG_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fpn_seg"
    return Path(root) / CACHE_FILE_NAME


def cache_key(source: str, capabilities: CpuCapabilities, request: dict) -> str:
    """A key that changes when the model files, the machine, the runtimes' versions or the request change."""
    folder = Path(source)
    files = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".onnx", ".safetensors", ".json", ".bin", ".data"):
                stat = path.stat()
                files.append((path.name, stat.st_size, stat.st_mtime_ns))
    versions = {}
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    text = json.dumps([str(folder.resolve()) if folder.is_dir() else source, files, capabilities.key(), versions,
                       os.cpu_count(), request], sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_cached_choice(key: str) -> RuntimeChoice | None:
    try:
        entry = json.loads(cache_path().read_text()).get(key)
        return RuntimeChoice.from_json(entry, cached=True) if entry else None
    except (OSError, ValueError, KeyError, TypeError):  # no cache yet, or one that cannot be read: probe again
        return None


def write_cached_choice(key: str, choice: RuntimeChoice) -> None:
    """Add `choice` under `key` (the file is replaced whole; an unwritable cache is not an error)."""
    path = cache_path()
    try:
        entries = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = choice.to_json()
    try:
        write_file_atomically(path, lambda temporary: temporary.write_text(json.dumps(entries, indent=1)))
    except OSError:
        pass


__all__ = [
    "EXACT_PRECISION",
    "EXACT_TOLERANCE",
    "MIN_AGREEMENT",
    "MIN_GAIN",
    "RUNTIMES",
    "RUNTIME_NAMES",
    "Candidate",
    "ProbeResult",
    "RuntimeChoice",
    "RuntimeChoiceError",
    "cache_key",
    "cache_path",
    "check_against_reference",
    "choose",
    "plan_candidates",
    "probe_candidates",
    "probe_pixel_values",
    "read_cached_choice",
    "write_cached_choice",
]
