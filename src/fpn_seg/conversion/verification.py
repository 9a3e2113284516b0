"""Checking a converted model against a reference `.npz` made with the real mmsegmentation: max / mean abs logit
difference and argmax agreement.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modeling_semantic_fpn import SemanticFPNForSemanticSegmentation
from .model_zoo import ConversionError


@dataclass(frozen=True)
class LogitsComparison:
    """Our logits against a reference `.npz` (`pixel_values` (B, 3, H, W) in, `logits` (B, N, H, W) expected)."""

    reference: str
    shape: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    argmax_agreement: float  # fraction of the B * H * W pixels where both argmaxes agree
    num_pixels: int

    def summary(self) -> str:
        agreeing = round(self.argmax_agreement * self.num_pixels)
        return (
            f"verify {self.reference}: logits {self.shape}, max abs diff {self.max_abs_diff:.3e}, mean abs diff "
            f"{self.mean_abs_diff:.3e}, argmax agreement {100 * self.argmax_agreement:.4f}% "
            f"({agreeing}/{self.num_pixels} pixels)"
        )


def compare_with_reference(model: nn.Module, reference: str | os.PathLike) -> LogitsComparison:
    """Run `model` (eval, float32, CPU) on the reference's `pixel_values` and compare with its `logits`."""
    reference = Path(reference)
    try:
        arrays = np.load(reference)
        pixel_values, expected = arrays["pixel_values"], arrays["logits"]
    except (OSError, ValueError, KeyError) as error:
        raise ConversionError(
            f"--verify {reference}: expected an .npz with 'pixel_values' (B, 3, H, W) and 'logits' (B, N, H, W) "
            f"({error})."
        ) from None
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(pixel_values).float()).logits
    if tuple(logits.shape) != tuple(expected.shape):
        raise ConversionError(
            f"--verify {reference}: the model gives logits of shape {tuple(logits.shape)}, the reference "
            f"{tuple(expected.shape)} (different class count or input size)."
        )
    expected = torch.from_numpy(expected).float()
    difference = (logits - expected).abs()
    agreement = (logits.argmax(1) == expected.argmax(1)).float()
    return LogitsComparison(
        reference=reference.name,
        shape=tuple(logits.shape),
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        argmax_agreement=float(agreement.mean()),
        num_pixels=agreement.numel(),
    )


def verify_converted(folder: str | os.PathLike, reference: str | os.PathLike) -> LogitsComparison:
    """Load a converted folder with `from_pretrained` and compare it with a reference `.npz`."""
    model = SemanticFPNForSemanticSegmentation.from_pretrained(str(folder))
    return compare_with_reference(model, reference)


__all__ = ["LogitsComparison", "compare_with_reference", "verify_converted"]
