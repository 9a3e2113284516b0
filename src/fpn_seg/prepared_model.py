"""The model side of the one inference path: a model made ready for inference once, and reused.

[`PreparedModel`] holds what is prepared for speed, once per model: the exact optimised copy (BatchNorm folded into
the convs, channels_last; oneDNN convs on the CPU, see `fpn_seg.optimization`) on the chosen device, and, on a CUDA
device, one [`CUDAGraphRunner`] per precision (CUDA graphs for repeated input shapes). Its [`PreparedModel.logits`]
is the one place where the model is called: normalised `pixel_values` (B, 3, h, w) in, float32 logits
(B, N, h, w) out, on the device, in float32 or under float16 / bfloat16 autocast.

[`PreparedModel.of`] keeps the prepared state per model (weakly: it goes when the model goes), so that `segment()`
called in a loop prepares once. It never serves stale weights: every use compares the model's weights with a
fingerprint taken when it was prepared (each parameter and buffer by identity, its version counter, which every
in-place change such as an optimiser step or `load_state_dict` bumps, its storage address, dtype and device); after
any change (training, `model.to(...)`, a replaced parameter) the model is prepared again.
"""

import inspect
from contextlib import nullcontext
import threading
import weakref
from typing import Literal

import torch
from torch import nn

from .cuda_graphs import CUDAGraphRunner
from .modeling_semantic_fpn import SemanticFPNForSemanticSegmentation, logits_per_image
from .optimization import is_batch_norm_folded, optimize_for_inference

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_MAX_GRAPHS = 8
DEFAULT_MAX_GRAPH_PIXELS = 2**24  # batch x height x width: e.g. 8 images of 1024x2048


class ModelPlacementError(ValueError):
    """A model whose weights cannot be run where they are (on the 'meta' device, or spread over several devices)."""


def model_device_and_dtype(model) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go and their float dtype: its `device` / `dtype` (transformers models, the ONNX Runtime
    model), else those of its first parameter."""
    device, dtype = getattr(model, "device", None), getattr(model, "dtype", None)
    if isinstance(device, torch.device) and isinstance(dtype, torch.dtype):
        return device, dtype
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `model`, module by module (a shared one once per module that holds it)."""
    return [
        tensor
        for module in model.modules()
        for tensors in (module._parameters, module._buffers)
        for tensor in tensors.values()
        if tensor is not None
    ]


def model_placement(model) -> tuple[torch.device, bool]:
    """(the device inputs go to, whether the model is dispatched over devices by accelerate's `device_map`).

    A `ModelPlacementError` names the remedy for weights on the 'meta' device (never loaded) and for weights spread
    over several devices without a `device_map` (nothing would move the activations between them)."""
    if not isinstance(model, nn.Module):
        return model_device_and_dtype(model)[0], False
    devices = {tensor.device for tensor in _tensors(model)}
    name = type(model).__name__
    if getattr(model, "hf_device_map", None) and len(devices) > 1:  # accelerate's hooks move inputs and activations
        first = next(iter(model.hf_device_map.values()))
        first = f"cuda:{first}" if isinstance(first, int) else first
        return (torch.device("cpu") if first in ("disk", "meta") else torch.device(first)), True
    if len(devices) > 1:
        shown = ", ".join(sorted(str(device) for device in devices))
        on_meta = any(device.type == "meta" for device in devices)
        never_loaded = " (those on 'meta' were never loaded)" if on_meta else ""
        raise ModelPlacementError(
            f"The {name}'s weights lie on several devices ({shown}){never_loaded}: move it to one with "
            "model.to(device), or load it with from_pretrained(..., device_map=...) so that accelerate moves the "
            "activations between devices."
        )
    if devices == {torch.device("meta")}:
        raise ModelPlacementError(
            f"The {name}'s weights are on the 'meta' device: they were never loaded (a model made with "
            "device='meta' or init_empty_weights). Load it with from_pretrained(folder), or give it weights with "
            "model.to_empty(device=...) and load_state_dict(...)."
        )
    return (devices.pop() if devices else torch.device("cpu")), False


class WeightsFingerprint:
    """What a model's weights were when it was prepared: each parameter and buffer (weakly, by identity), its
    version counter (bumped by every in-place change) and its storage address (a new one after `model.to(...)` to
    another device or dtype). [`matches`] is False after training steps, `load_state_dict`, `model.to(...)`, a
    replaced parameter or module, ... A check takes well under a millisecond for R-50's 390 tensors."""

    def __init__(self, model: nn.Module):
        self._entries = [(weakref.ref(tensor), tensor._version, tensor.data_ptr()) for tensor in _tensors(model)]

    @classmethod
    def of(cls, model) -> "WeightsFingerprint | None":
        """The fingerprint of `model`, or None when it cannot be taken (not a torch module; weights created under
        `torch.inference_mode()`, which keep no version counter): such models are prepared on every call."""
        if not isinstance(model, nn.Module):
            return None
        try:
            return cls(model)
        except RuntimeError:
            return None

    def matches(self, model: nn.Module) -> bool:
        tensors = _tensors(model)
        if len(tensors) != len(self._entries):
            return False
        for tensor, (reference, version, pointer) in zip(tensors, self._entries):
            if reference() is not tensor or tensor._version != version or tensor.data_ptr() != pointer:
                return False
        return True


class PreparedModel:
    """A model ready for inference on one device (see the module docstring); build it with [`PreparedModel.of`].

    Args:
        model: a `SemanticFPNForSemanticSegmentation` (any model returning `logits` at the input size, such as
            `fpn_seg.deployment.ORTModelForSemanticSegmentation`, runs as given).
        device: where inference runs; default: where the model is. The optimised copy is made there (the model
            itself is never moved); running a model as given on another device is refused.
        optimize: run the exact optimised copy ([`optimize_for_inference`]) of models that can fold their
            BatchNorms; `False`: the model as given.
        cuda_graphs: replay CUDA graphs for repeated input shapes ([`CUDAGraphRunner`]); default: on for an
            optimised model on a CUDA device.
        max_graphs, max_graph_pixels: the graph cache's bounds (shapes kept; batch x height x width of an input).
        capture: the graph capture function (a stand-in lets the cache logic run on the CPU, in tests).
    """

    def __init__(
        self,
        model,
        device: str | torch.device | None = None,
        optimize: bool = True,
        cuda_graphs: bool | None = None,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        max_graph_pixels: int | None = DEFAULT_MAX_GRAPH_PIXELS,
        capture=None,
    ):
        source_device, dispatched = model_placement(model)
        self.device = torch.device(device) if device is not None else source_device
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.fingerprint = WeightsFingerprint.of(model)
        foldable = isinstance(model, SemanticFPNForSemanticSegmentation) and not is_batch_norm_folded(model)
        self.optimized = bool(optimize) and foldable and not dispatched
        if self.optimized:
            copy = optimize_for_inference(model, onednn_convs=self.device.type == "cpu")
            self._model, self._model_ref = copy.to(self.device), None
        else:
            if self.device != source_device and not dispatched:
                raise ValueError(
                    f"The {type(model).__name__} is on {source_device} and runs as given there (optimize=False or a "
                    f"model that is not optimised); move it with model.to({str(self.device)!r}) first, or pass "
                    f"device={str(source_device)!r}."
                )
            # As given: held weakly, so that the per-model cache does not keep the model alive.
            try:
                self._model, self._model_ref = None, weakref.ref(model)
            except TypeError:  # an object without weak references (never cached: it has no fingerprint)
                self._model, self._model_ref = model, None
        is_module = isinstance(model, nn.Module)
        if cuda_graphs is None:
            cuda_graphs = self.optimized and self.device.type == "cuda"
        if cuda_graphs and (not is_module or dispatched):
            raise ValueError(f"cuda_graphs=True needs a torch model on one device; got a {type(model).__name__}.")
        if cuda_graphs and self.device.type != "cuda" and capture is None:
            raise ValueError(f"cuda_graphs=True needs a CUDA device; the model runs on {self.device}.")
        self.cuda_graphs = bool(cuda_graphs)
        self.is_torch_model = is_module
        self.input_dtype = model_device_and_dtype(model)[1]
        self._graph_options = {"max_graphs": max_graphs, "max_elements": max_graph_pixels, "capture": capture}
        self._runners: dict[str, CUDAGraphRunner] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ the cache

    _cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    _cache_lock = threading.Lock()

    @classmethod
    def of(cls, model, **options) -> "PreparedModel":
        """The prepared `model` for these `options` (see the class), made once and kept while the model lives and
        its weights do not change (see [`WeightsFingerprint`]); any change prepares it again."""
        bound = _SIGNATURE.bind(model, **options)
        bound.apply_defaults()  # the same options given differently (or left at their defaults) share an entry
        key = tuple((name, str(value) if name == "device" else value) for name, value in bound.arguments.items()
                    if name != "model")  # fmt: skip
        with cls._cache_lock:
            entries = cls._cache.get(model) if isinstance(model, nn.Module) else None
            prepared = None if entries is None else entries.get(key)
            if prepared is not None and prepared.is_current_for(model):
                return prepared
            prepared = cls(model, **options)
            if prepared.fingerprint is not None:
                cls._cache.setdefault(model, {})[key] = prepared
            return prepared

    def is_current_for(self, model) -> bool:
        """Whether this was prepared from `model` as its weights are now."""
        return self.fingerprint is not None and self.fingerprint.matches(model)

    # ------------------------------------------------------------------------------------------ running

    @property
    def model(self):
        """The module inference runs: the optimised copy, or the model as given."""
        if self._model is not None:
            return self._model
        model = self._model_ref()
        if model is None:
            raise ReferenceError("The model this PreparedModel runs as given no longer exists.")
        return model

    def check_precision(self, precision: str) -> None:
        """A `ValueError` naming the remedy when this model cannot run at `precision` here."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {precision!r}.")
        if precision != "fp32" and not self.is_torch_model:
            raise ValueError(
                f"precision={precision!r} runs a torch model under autocast; {type(self.model).__name__} runs at the "
                "precision it was loaded with (e.g. ORTModelForSemanticSegmentation.from_pretrained(folder, "
                "precision='int8'))."
            )
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision='fp16' needs a GPU; on the CPU use precision='bf16' (bfloat16 autocast).")

    def logits(
        self, pixel_values: torch.Tensor, precision: str = "fp32", image_sizes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Float32 logits (B, N, h, w) on the device of normalised `pixel_values` (B, 3, h, w), the one model call.

        With `image_sizes` (B, 2) of a padded batch (the processor's `pixel_mask`, see `image_sizes_of`), each image
        runs alone on its own region (zeros over the padding), as the model does in eval mode."""
        self.check_precision(precision)
        pixel_values = pixel_values.to(device=self.device, dtype=self.input_dtype, non_blocking=True)
        run = self._runner(precision)
        if image_sizes is not None and bool((image_sizes != image_sizes.new_tensor(pixel_values.shape[-2:])).any()):
            return logits_per_image(run, pixel_values, image_sizes)
        return run(pixel_values)

    def _runner(self, precision: str):
        if not self.cuda_graphs:
            return lambda pixel_values: self._forward(pixel_values, precision)
        with self._lock:
            if precision not in self._runners:
                prepared = weakref.ref(self)  # no reference cycle: the graphs' memory goes with this object

                def forward(pixel_values: torch.Tensor) -> torch.Tensor:
                    return prepared()._forward(pixel_values, precision)

                self._runners[precision] = CUDAGraphRunner(forward, **self._graph_options)
            return self._runners[precision]

    def graph_runner(self, precision: str = "fp32") -> CUDAGraphRunner | None:
        """The CUDA graph cache of `precision` (None without CUDA graphs or before its first call)."""
        return self._runners.get(precision)

    def _forward(self, pixel_values: torch.Tensor, precision: str) -> torch.Tensor:
        dtype = PRECISIONS[precision]
        # cache_enabled=False: autocast's cache of cast weights must stay off under CUDA graph capture.
        autocast = torch.autocast(self.device.type, dtype=dtype, cache_enabled=False) if dtype else nullcontext()
        with autocast:
            logits = self.model(pixel_values=pixel_values, return_dict=True).logits
        return logits.float()

    def __repr__(self) -> str:
        what = "optimised copy" if self.optimized else "as given"
        return f"{type(self).__name__}({type(self.model).__name__}, {what}, device={self.device}, " \
               f"cuda_graphs={self.cuda_graphs})"  # fmt: skip


_SIGNATURE = inspect.signature(PreparedModel)

__all__ = [
    "DEFAULT_MAX_GRAPHS",
    "DEFAULT_MAX_GRAPH_PIXELS",
    "ModelPlacementError",
    "PRECISIONS",
    "PreparedModel",
    "WeightsFingerprint",
    "model_device_and_dtype",
    "model_placement",
]
