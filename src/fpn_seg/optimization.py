"""Faster CPU inference for Semantic FPN: one switch per optimisation, and the bfloat16 autocast switch.

Exact switches of [`optimize_for_inference`] (float32; the plain eager model's logits up to float rounding: within
1e-4 on the test models, about 5e-6 of the logits' scale on the full-size ones):

- `fold_batch_norm`: every BatchNorm that follows a conv is merged into that conv (see [`fold_batch_norm`]: an
  eval-only copy that refuses training and saving), saving one pass over each activation.
- `channels_last`: weights (and hence activations) in NHWC order, the layout oneDNN's conv kernels use natively; the
  plain NCHW path reorders every conv's input and output.
- `onednn_convs`: every conv runs through oneDNN (`aten.mkldnn_convolution`). With one thread, torch sends stride-1
  1x1 convs to its own im2col + GEMM kernel instead, which is slower in channels_last (about half the rate on the
  wide, shallow 1x1 convs of the first stage).
- `compile` (off by default): `torch.compile` (inductor) with freezing: the weights become constants, oneDNN weights
  are prepacked, ReLUs and residual adds are fused into the convs and the other ops become generated C++ loops. It
  compiles once per input shape (20-60 s for R-50 on two cores), so it pays off only when many images share a shape.

Process-wide and exact: [`retain_freed_memory`] stops glibc from unmapping every large activation after use (and
page-faulting it in again on the next forward); for processes that own their allocator, such as the predict CLI.

Not exact: [`bf16_autocast`] runs the convs in bfloat16 (fast on CPUs with AVX512-BF16 or AMX); predictions agree
with float32 on almost every pixel of a trained model, logits differ by a few percent of their scale.

The exact float32 default for inference is `optimize_for_inference(model)` (folded BatchNorm + channels_last +
oneDNN convs, eager); see `benchmarks/README.md` for the measurements behind each choice.
"""

import contextlib
import copy
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .modeling_semantic_fpn import SemanticFPNConvBlock, SemanticFPNForSemanticSegmentation


# ------------------------------------------------------------------------------------------------ BatchNorm folding


def fold_batch_norm_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv (with bias) that computes `norm(conv(x))` for an eval-mode `norm`, as one op.

    `norm(y) = (y - mean) / sqrt(var + eps) * gamma + beta` is per output channel affine, so it folds into the conv's
    weight `(C_out, C_in, kh, kw)` and bias `(C_out,)`; computed in float64, stored in the conv's dtype.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"Cannot fold {norm}: it has no running statistics (track_running_stats=False).")
    if norm.num_features != conv.out_channels:
        raise ValueError(f"Cannot fold {norm} into {conv}: {norm.num_features} features, {conv.out_channels} outputs.")

    def float64(tensor: torch.Tensor) -> torch.Tensor:  # on the CPU: some devices (MPS) have no float64
        return tensor.detach().to("cpu", torch.float64)

    weight, dtype = float64(conv.weight), conv.weight.dtype
    scale = torch.rsqrt(float64(norm.running_var) + norm.eps)  # (C_out,)
    shift = -float64(norm.running_mean) * scale
    if norm.weight is not None:
        scale, shift = scale * float64(norm.weight), shift * float64(norm.weight)
    if norm.bias is not None:
        shift = shift + float64(norm.bias)
    bias = shift if conv.bias is None else float64(conv.bias) * scale + shift
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=dtype,
    )
    with torch.no_grad():
        folded.weight.copy_((weight * scale.view(-1, 1, 1, 1)).to(dtype))  # cast on the CPU, then to the device
        folded.bias.copy_(bias.to(dtype))
    # Keep the memory format of the original weight (e.g. channels_last).
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        folded.weight.data = folded.weight.data.contiguous(memory_format=torch.channels_last)
    return folded


class BatchNormFoldedSemanticFPN(SemanticFPNForSemanticSegmentation):
    """An eval-only copy of a Semantic FPN whose BatchNorms are merged into their convs (made by [`fold_batch_norm`]).

    It refuses `.train()` and `save_pretrained()`: its state dict has no BatchNorm entries, so it would load into an
    unfolded model as silently wrong BatchNorms. A forward pass with `labels` is allowed (the eval loss depends on
    the logits only).
    """

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "This model is a BatchNorm-folded inference copy (made by fold_batch_norm()) and cannot be trained: "
                "its BatchNorms are merged into the convs. Train the original, unfolded model instead."
            )
        return super().train(False)

    def save_pretrained(self, *args, **kwargs):
        raise RuntimeError(
            "This model is a BatchNorm-folded inference copy (made by fold_batch_norm()); save the original, unfolded "
            "model instead and fold it again after loading."
        )


def is_batch_norm_folded(model: nn.Module) -> bool:
    """Whether `model` is a BatchNorm-folded copy made by [`fold_batch_norm`]."""
    return isinstance(model, BatchNormFoldedSemanticFPN)


def fold_batch_norm(model: SemanticFPNForSemanticSegmentation) -> BatchNormFoldedSemanticFPN:
    """An eval-only copy of `model` in which every BatchNorm that follows a conv is folded into that conv.

    Each folded conv gets a bias and its BatchNorm becomes `nn.Identity`, saving one pass over each activation at
    inference; logits equal the eval-mode model's up to float rounding (about 1e-6 relative). The pairs are the
    head's conv blocks and those the backbone names (`conv_norm_pairs()`, ResNetV1c's); BatchNorms of other backbones
    stay as they are. `model` is left untouched; the copy's parameters do not require grad.
    """
    if not isinstance(model, SemanticFPNForSemanticSegmentation):
        raise TypeError(f"fold_batch_norm takes a SemanticFPNForSemanticSegmentation; got a {type(model).__name__}.")
    with torch.device("meta"):  # the structure only: the weights are the model's, copied below
        folded = BatchNormFoldedSemanticFPN(copy.deepcopy(model.config))
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    folded.load_state_dict(weights, assign=True)  # every tensor, strides (e.g. channels_last) and dtype kept
    for name, buffer in model.named_buffers():  # buffers outside the state dict (persistent=False), if any
        if name not in weights:
            owner, _, leaf = name.rpartition(".")
            folded.get_submodule(owner).register_buffer(leaf, buffer.detach().clone(), persistent=False)
    folded.eval()
    pairs = [(block, "conv", "norm") for block in folded.decode_head.modules() if isinstance(block, SemanticFPNConvBlock)]
    if hasattr(folded.backbone, "conv_norm_pairs"):
        pairs += folded.backbone.conv_norm_pairs()
    for parent, conv_name, norm_name in pairs:
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        if isinstance(norm, nn.BatchNorm2d):
            setattr(parent, conv_name, fold_batch_norm_into_conv(conv, norm))
            setattr(parent, norm_name, nn.Identity())
    folded.requires_grad_(False)
    return folded


_fold_batch_norm = fold_batch_norm  # for `optimize_for_inference`, whose flag has the same name


# ------------------------------------------------------------------------------------------------ oneDNN, compile


class OneDNNConv2d(nn.Conv2d):
    """`nn.Conv2d` that always takes oneDNN's kernel on CPU (float32), whatever torch's size heuristics would pick.

    Same parameters and state dict as `nn.Conv2d`; falls back to `nn.Conv2d.forward` off CPU, under autocast (which
    only casts `aten.conv2d`), for non-float32 inputs and for non-zero padding modes. Made by [`use_onednn_convs`].
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            hidden_states.device.type != "cpu"
            or hidden_states.dtype != torch.float32
            or self.weight.dtype != torch.float32
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or torch.is_autocast_enabled("cpu")
        ):
            return super().forward(hidden_states)
        return torch.ops.aten.mkldnn_convolution(
            hidden_states, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
        )


def onednn_conv_of(conv: nn.Conv2d) -> OneDNNConv2d:
    """A [`OneDNNConv2d`] with `conv`'s settings and its very parameters (shared, not copied)."""
    with torch.device("meta"):  # no weights allocated: `conv`'s are put in below
        onednn_conv = OneDNNConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )  # fmt: skip
    onednn_conv.weight, onednn_conv.bias = conv.weight, conv.bias
    return onednn_conv.train(conv.training)


def use_onednn_convs(model: nn.Module) -> nn.Module:
    """Replace every plain `nn.Conv2d` of `model` by a [`OneDNNConv2d`] holding the same parameters, in place; returns
    `model` (or its replacement when `model` itself is a plain `nn.Conv2d`)."""
    if not torch.backends.mkldnn.is_available():
        return model
    if type(model) is nn.Conv2d:
        return onednn_conv_of(model)
    replacements = {}  # a conv shared by two parents gets one replacement
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                if id(child) not in replacements:
                    replacements[id(child)] = onednn_conv_of(child)
                setattr(parent, name, replacements[id(child)])
    return model


class FrozenCompiledModel(nn.Module):
    """`torch.compile` (inductor) of an eval-mode model with inductor's freezing: weights become constants, BatchNorms
    fold, oneDNN conv weights are prepacked and ReLUs / residual adds are fused into the convs.

    Freezing is a global inductor setting that must be on while dynamo traces (the first call for each input shape),
    which `torch.compile(options=...)` does not achieve, so every call runs under `torch.no_grad()` and
    `inductor_config.patch(freezing=True)`. Frozen weights are copied at compile time: changing the model's weights
    afterwards does not affect the compiled calls. Other attributes (e.g. `config`) are read from the wrapped model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_compiled", torch.compile(model))  # not a submodule: `model` holds the weights

    def forward(self, *args, **kwargs):
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=True), torch.no_grad():
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


def compile_for_inference(model: nn.Module) -> FrozenCompiledModel:
    """[`FrozenCompiledModel`] of `model` (compiled on the first call for each input shape)."""
    return FrozenCompiledModel(model.eval())


def optimize_for_inference(
    model: SemanticFPNForSemanticSegmentation,
    *,
    fold_batch_norm: bool = True,
    channels_last: bool = True,
    onednn_convs: bool = True,
    compile: bool = False,
) -> nn.Module:
    """An inference copy of `model` with the chosen exact optimisations; `model` itself is left untouched.

    The copy is in eval mode and cannot be trained; feed it `pixel_values` as usual (any memory format; they need not
    be channels_last) under `torch.inference_mode()`. Its logits come back in the model's memory format: call
    `.contiguous()` on them if a consumer needs NCHW strides. With `compile=True` the result is a
    [`FrozenCompiledModel`], compiled on its first call for each input shape (`onednn_convs` is then moot: inductor
    picks oneDNN itself).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference: model must be an nn.Module, got {type(model).__name__}.")
    if fold_batch_norm:
        if not isinstance(model, SemanticFPNForSemanticSegmentation):
            raise TypeError(
                f"optimize_for_inference: {type(model).__name__} is not a Semantic FPN, whose BatchNorms it knows how to "
                "fold (no fold_batch_norm for it); pass fold_batch_norm=False."
            )
        optimized = _fold_batch_norm(model)
    else:
        optimized = copy.deepcopy(model).eval()
        optimized.requires_grad_(False)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if onednn_convs and not compile:  # inductor picks oneDNN itself, and fuses only `aten.convolution` nodes
        optimized = use_onednn_convs(optimized)
    if compile:
        optimized = compile_for_inference(optimized)
    return optimized


# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def retain_freed_memory(enable: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the system: process-wide, exact.

    By default every allocation above the mmap threshold (at most 32 MiB; a 512x1024 image's stage-1 activation
    is 33.5 MiB) is a fresh `mmap`, so each forward pass page-faults (and the kernel zeroes) every large activation
    again: about 6 GiB of page faults per R-50 512x1024 forward. With `enable=True` all allocations come from the heap
    and freed blocks stay there (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)`): 10-15% faster on
    this project's CPU, at the price of a resident set that stays at its peak until the process exits. Meant for
    processes that mostly run the model (the predict CLI, a server); libraries should leave it to the application.
    `enable=False` restores glibc's default limits (its dynamic threshold adjustment stays off).

    Returns False (and changes nothing) where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_max, trim_threshold = (0, 2**31 - 1) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def bf16_is_fast(device: str | torch.device = "cpu") -> bool:
    """Whether `device` has native bfloat16 arithmetic (CPU: AVX512-BF16 or AMX, as oneDNN reports; CUDA: Ampere+)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


@contextlib.contextmanager
def bf16_autocast(device: str | torch.device = "cpu", enabled: bool = True) -> Iterator[None]:
    """Run the enclosed model calls under bfloat16 autocast on `device`'s type (`"cpu"` or `"cuda"`).

    Not exact: convs run in bfloat16 (8-bit mantissa), the rest stays float32. Use `logits.float()` downstream.
    """
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled):
        yield


def prediction_agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Fraction of pixels where the argmax over classes (dim 1) of `logits` (B, N, H, W) equals that of
    `reference_logits` (same shape; resized bilinearly if only the spatial size differs)."""
    if logits.shape[:2] != reference_logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and reference_logits {tuple(reference_logits.shape)} must have the same "
            "batch size and number of classes."
        )
    if logits.shape[-2:] != reference_logits.shape[-2:]:
        logits = F.interpolate(logits.float(), size=reference_logits.shape[-2:], mode="bilinear", align_corners=False)
    return (logits.argmax(1) == reference_logits.argmax(1)).float().mean().item()


__all__ = [
    "BatchNormFoldedSemanticFPN",
    "FrozenCompiledModel",
    "OneDNNConv2d",
    "bf16_autocast",
    "bf16_is_fast",
    "compile_for_inference",
    "fold_batch_norm",
    "fold_batch_norm_into_conv",
    "is_batch_norm_folded",
    "optimize_for_inference",
    "prediction_agreement",
    "retain_freed_memory",
    "use_onednn_convs",
]
