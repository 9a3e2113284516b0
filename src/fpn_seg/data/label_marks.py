"""The label-policy mark on label PNGs: every label PNG the loaders write carries a PNG text chunk
(`fpn_seg.label_policy`) saying which label policy turns its values into training ids (raw ADE20K annotations need
`reduce_labels=True`; Cityscapes train ids need nothing). The mark travels with the PNG bytes (through `save_to_disk`,
Parquet, `select`, `map`...), and the transforms compare it with the processor's policy ([`check_label_policy`]): a
policy applied twice, or not at all, is an error instead of silently wrong labels. Adding the mark does not re-encode
pixels (the chunk is spliced in after the PNG header).
"""

import io
import struct
import zlib
from typing import Any

import numpy as np
import PIL.Image

from ..label_policy import LabelPolicy


LABEL_POLICY_KEY = "fpn_seg.label_policy"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_text_chunk(key: str, value: str) -> bytes:
    payload = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    crc = zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", crc)


def mark_label_png(data: bytes, policy: LabelPolicy) -> bytes:
    """PNG bytes with the label-policy text chunk inserted after the header (pixels untouched)."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise ValueError("mark_label_png expects PNG bytes starting with an IHDR chunk.")
    header_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return data[:header_end] + _png_text_chunk(LABEL_POLICY_KEY, policy.to_json()) + data[header_end:]


def encode_label_png(label: np.ndarray, policy: LabelPolicy | None = None) -> bytes:
    """A (H, W) uint8 label map as PNG bytes (mode "L"), marked with `policy` when given."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"encode_label_png expects a (H, W) uint8 array, got {label.dtype} {tuple(label.shape)}.")
    buffer = io.BytesIO()
    PIL.Image.fromarray(label, mode="L").save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    return mark_label_png(data, policy) if policy is not None else data


def label_policy_of(label: PIL.Image.Image) -> LabelPolicy | None:
    """The policy a label image was marked with by the `fpn_seg.data` loaders, or `None` for unmarked labels."""
    text = getattr(label, "info", {}).get(LABEL_POLICY_KEY)
    return LabelPolicy.from_json(text) if text else None


def check_label_policy(label: Any, holder: Any) -> None:
    """Raise if `label` (a PIL image from a `fpn_seg.data` loader) is marked with a policy other than `holder`'s.

    `holder` is a `SemanticFPNImageProcessor` or a `SemanticFPNConfig`. Unmarked labels (plain arrays, datasets not
    made by `fpn_seg.data`) pass: their policy is the caller's responsibility.
    """
    policy = label_policy_of(label) if isinstance(label, PIL.Image.Image) else None
    if policy is None:
        return
    kind = "processor" if hasattr(holder, "do_reduce_labels") else type(holder).__name__
    problems = policy.differences(LabelPolicy.of(holder), "the labels need", f"the {kind} has")
    if problems:
        raise ValueError(
            f"The label maps hold {policy.description}, but the {kind}'s label policy does not match "
            f"({'; '.join(problems)}). Applying it would train on wrong labels; build the processor from a config "
            "with the policy the labels need (e.g. `SemanticFPNImageProcessor.from_model_config(config)` with "
            "`config.reduce_labels` / `config.label_map` set accordingly)."
        )


__all__ = ["LABEL_POLICY_KEY", "check_label_policy", "encode_label_png", "label_policy_of", "mark_label_png"]
