"""[`load_runtime`]: a model folder (torch, or an ONNX export) -> (a model-like object, its image processor, the
[`RuntimeChoice`] that says what runs and why), for any runtime: `"torch"`, `"onnxruntime"`, `"openvino"`, or
`"auto"` (the fastest correct one for this machine, see `runtime_choice`). The commands (`fpn-seg predict`, the app)
load their models through it.

    model, processor, choice = load_runtime("demo_output/onnx", "auto")
    print(choice.summary())  # e.g. "OpenVINO int8: fastest correct path on a 128x256 probe: ..."
    label_maps = segment(model, processor, images, bf16=choice.autocast_bf16)
"""

import importlib.util
import os
from pathlib import Path

import torch
from transformers.utils import IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME

from ..model_folders import WEIGHT_FILES, load_model, load_processor
from .cpu_capabilities import detect_cpu_capabilities
from .onnx_folder import OnnxFolderError, check_precision, folder_precisions, is_onnx_folder
from .runtime_choice import (
    RUNTIMES,
    Candidate,
    RuntimeChoice,
    RuntimeChoiceError,
    cache_key,
    choose,
    plan_candidates,
    probe_candidates,
    probe_pixel_values,
    read_cached_choice,
    write_cached_choice,
)

RUNTIME_CHOICES = (*RUNTIMES, "auto")


def runtime_class(runtime: str):
    """The model class of an ONNX runtime: `ORTModelForSemanticSegmentation` or `OVModelForSemanticSegmentation`."""
    if runtime == "onnxruntime":
        from .onnxruntime_model import ORTModelForSemanticSegmentation

        return ORTModelForSemanticSegmentation
    if runtime == "openvino":
        from .openvino_model import OVModelForSemanticSegmentation

        return OVModelForSemanticSegmentation
    raise ValueError(f"runtime must be one of {list(RUNTIME_CHOICES)}; got {runtime!r}.")


def folder_kinds(source: str) -> tuple[str, ...]:
    """What a model source holds: "onnx" (an export: `model.onnx`) and / or "torch" (weights, or a hub id)."""
    folder = Path(source)
    if not folder.exists():
        return ("torch",)  # a hub id (or a typo, which loading names)
    kinds = ("onnx",) if is_onnx_folder(folder) else ()
    if folder.is_dir() and any((folder / name).is_file() for name in WEIGHT_FILES):
        kinds += ("torch",)
    return kinds or ("torch",)  # neither: let the torch loader name what is missing


def installed_runtimes() -> tuple[str, ...]:
    """The runtimes importable here ("torch" always)."""
    return ("torch",) + tuple(name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name))


def offered_precisions(runtime: str, source: str) -> tuple[str, ...]:
    """The precisions `runtime` runs `source` at on this machine, as auto plans them (torch: fp32, and bf16 where
    the CPU has it natively; the ONNX runtimes: what they run of the folder's files; OpenVINO bf16 where the CPU has
    it)."""
    kinds = folder_kinds(source)
    onnx_precisions = folder_precisions(source) if "onnx" in kinds else ()
    candidates, _ = plan_candidates(kinds, onnx_precisions, installed_runtimes(), detect_cpu_capabilities())
    return tuple(candidate.precision for candidate in candidates if candidate.runtime == runtime)


def _onnx_processor(folder: str, config):
    has_processor = (Path(folder) / IMAGE_PROCESSOR_NAME).is_file()
    return load_processor(str(folder), config, f"ONNX folder {str(folder)!r}", has_processor)


class _TorchModel:
    """The torch model of a source, loaded once for both of its precisions (bf16 runs it under autocast), and
    prepared once as the one inference path runs it (`PreparedModel`: the exact optimised copy with `optimize`)."""

    def __init__(self, source: str, trust_remote_code: bool, device, optimize: bool):
        from ..prepared_model import PreparedModel

        self.model, self.processor = load_model(source, trust_remote_code)
        self.prepared = PreparedModel.of(self.model, device=device, optimize=optimize)

    def runner(self, bf16: bool):
        precision = "bf16" if bf16 else "fp32"
        return lambda pixel_values: self.prepared.logits(pixel_values, precision)


def check_torch_request(source: str, precision: str | None) -> None:
    """An `OnnxFolderError` saying what to do when the torch runtime is asked to run `source` at `precision` but
    cannot: an ONNX export (no torch weights), or int8 (which runs on an export's `model_quantized.onnx`)."""
    if "torch" not in folder_kinds(source):
        raise OnnxFolderError(
            f"{source!r} is an ONNX export (model.onnx), not a torch model folder ({SAFE_WEIGHTS_NAME}): run it "
            "with runtime onnxruntime, openvino or auto."
        )
    if precision == "int8":
        raise OnnxFolderError(
            f"int8 runs on an ONNX export with model_quantized.onnx, not on the torch model {source!r}: "
            f"fpn-seg export {source} --output-dir OUT --int8 --calibration-images IMAGES..., then use OUT with "
            "runtime onnxruntime, openvino or auto."
        )


def load_runtime(
    source: str | os.PathLike,
    runtime: str = "auto",
    precision: str | None = None,
    *,
    num_threads: int | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    trust_remote_code: bool = False,
    use_cache: bool = True,
):
    """Load `source` with `runtime` at `precision`: returns `(model, processor, choice)`.

    Args:
        source: a model folder or hub id (runtime "torch"), or an ONNX folder of `fpn-seg export` ("onnxruntime",
            "openvino").
        runtime: "torch", "onnxruntime", "openvino", or "auto": the fastest runtime and precision that passes a
            short probe on this machine (see `fpn_seg.deployment.runtime_choice`).
        precision: "fp32" (exact), "bf16" or "int8"; None: "fp32" for a named runtime, any for "auto" (with "fp32",
            auto keeps to exact paths).
        num_threads: intra-op threads of ONNX Runtime and OpenVINO (None: their default).
        device, optimize: the torch runtime's device (auto: the CPU) and whether it runs the exact optimised copy
            (`fpn_seg.inference.prepare_model`).
        use_cache: reuse auto's earlier choice for the same folder, machine and request.

    The model is an `nn.Module` (torch) or an `ORTModelForSemanticSegmentation` / `OVModelForSemanticSegmentation`;
    `segment(model, processor, images, bf16=choice.autocast_bf16)` runs any of them.

    Raises:
        ValueError: an unknown runtime or precision; `OnnxFolderError` / `ModelFolderError` (a folder that cannot
            serve the request), `PrecisionUnavailableError` (bf16 on a CPU without it), `RuntimeChoiceError` (auto
            found nothing that runs); `ImportError` naming the extra of a runtime that is not installed.
    """
    source = str(source)
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"runtime must be one of {list(RUNTIME_CHOICES)}; got {runtime!r}.")
    if precision is not None:
        check_precision(precision)
    if runtime == "auto":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"runtime auto chooses among the CPU runtimes; got device {str(device)!r}. Use --runtime "
                             "torch to run on another device.")  # fmt: skip
        return _load_auto(source, precision, num_threads, optimize, trust_remote_code, use_cache)
    precision = precision or "fp32"
    if runtime == "torch":
        check_torch_request(source, precision)
        torch_model = _TorchModel(source, trust_remote_code, device, optimize)
        note = "" if precision == "fp32" else " under autocast"
        return torch_model.model, torch_model.processor, RuntimeChoice("torch", precision, f"asked for{note}")
    model = runtime_class(runtime).from_pretrained(source, precision=precision, num_threads=num_threads)
    return model, _onnx_processor(source, model.config), RuntimeChoice(runtime, precision, "asked for")


def _load_auto(source: str, precision, num_threads, optimize: bool, trust_remote_code: bool, use_cache: bool):
    capabilities = detect_cpu_capabilities()
    kinds = folder_kinds(source)
    onnx_precisions = folder_precisions(source) if "onnx" in kinds else ()
    candidates, skipped = plan_candidates(kinds, onnx_precisions, installed_runtimes(), capabilities, precision)
    if not candidates:
        why = "; ".join(f"{Candidate(r.runtime, r.precision)}: {r.note}" for r in skipped)
        why = why.replace("this CPU", f"this CPU, {capabilities.describe()}")
        wanted = f"precision {precision}" if precision else "any precision"
        hint = (" int8 runs on an ONNX export: fpn-seg export MODEL --output-dir OUT --int8 --calibration-images "
                "IMAGES..." if precision == "int8" and "onnx" not in kinds else "")  # fmt: skip
        raise RuntimeChoiceError(f"runtime auto has nothing to run {source!r} at {wanted} here"
                                 f"{f' ({why})' if why else ''}.{hint}")  # fmt: skip
    torch_model: list[_TorchModel] = []
    onnx_models: dict[Candidate, object] = {}

    def load(candidate: Candidate):
        if candidate.runtime == "torch":
            if not torch_model:
                torch_model.append(_TorchModel(source, trust_remote_code, None, optimize))
            return torch_model[0].runner(candidate.precision == "bf16")
        model = runtime_class(candidate.runtime).from_pretrained(source, candidate.precision, num_threads)
        onnx_models[candidate] = model
        return lambda pixel_values: model(pixel_values=pixel_values).logits

    def loaded(choice: RuntimeChoice):
        candidate = Candidate(choice.runtime, choice.precision)
        if candidate.runtime == "torch":
            return torch_model[0].model, torch_model[0].processor, choice
        model = onnx_models[candidate]
        return model, _onnx_processor(source, model.config), choice

    request = {"precision": precision, "num_threads": num_threads, "optimize": optimize, "kinds": kinds}
    key = cache_key(source, capabilities, request)
    cached = read_cached_choice(key) if use_cache else None
    if cached is not None and Candidate(cached.runtime, cached.precision) in candidates:
        try:
            load(Candidate(cached.runtime, cached.precision))
            return loaded(cached)
        except Exception:  # the cached choice does not load any more: probe again
            torch_model.clear()
            onnx_models.clear()
    processor_scale = _processor_scale(source, kinds, trust_remote_code)
    pixel_values = probe_pixel_values(processor_scale)
    reference = None
    if not any(candidate.exact for candidate in candidates):
        reference = _reference_runner(source, kinds, trust_remote_code, num_threads)
    results, runners = probe_candidates(candidates, load, pixel_values, reference)
    choice = choose(results + skipped, tuple(pixel_values.shape), capabilities.describe())
    for candidate in list(onnx_models):  # free the losers now
        if candidate != Candidate(choice.runtime, choice.precision):
            del onnx_models[candidate]
    if use_cache:
        write_cached_choice(key, choice)
    return loaded(choice)


def _processor_scale(source: str, kinds, trust_remote_code: bool):
    """The test scale (long, short) of the source's processor, for the probe's size (None when it has none)."""
    import json

    path = Path(source) / IMAGE_PROCESSOR_NAME
    try:
        return tuple(json.loads(path.read_text())["scale"]) if path.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reference_runner(source: str, kinds, trust_remote_code: bool, num_threads):
    """A float32 runner to check int8 / bf16 candidates against when none of the candidates is exact."""

    def run(pixel_values):
        if "torch" in kinds:
            return _TorchModel(source, trust_remote_code, None, True).runner(False)(pixel_values)
        errors = []
        for runtime in ("onnxruntime", "openvino"):
            try:
                model = runtime_class(runtime).from_pretrained(source, "fp32", num_threads)
            except (ImportError, ValueError) as error:
                errors.append(str(error))
                continue
            return model(pixel_values=pixel_values).logits
        raise RuntimeChoiceError("; ".join(errors))

    return run


__all__ = [
    "RUNTIME_CHOICES",
    "folder_kinds",
    "installed_runtimes",
    "load_runtime",
    "offered_precisions",
    "runtime_class",
]
