"""The label policy: how the values stored in annotation maps become the training ids that the loss, the metric and
the post-processing read. One frozen value object, [`LabelPolicy`], made from a config or a processor, applied by
the processor, described in error messages and carried as a mark on label PNGs.

Hub code: imports only the standard library and torch, so `save_pretrained` can copy it next to the config and the
processor that import it.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


# The value that evaluate's `reduce_labels` maps 0 to, whatever `ignore_index` is (it is hard-coded there too).
EVALUATE_REDUCED_BACKGROUND = 255


@dataclass(frozen=True)
class LabelPolicy:
    """How raw annotation values become training ids.

    - `label_map`: raw value -> training id, applied first (e.g. Cityscapes label ids -> train ids);
    - `reduce_labels`: ADE20K's `reduce_zero_label`, applied second: 0 ("other") -> `ignore_index`, `v` -> `v - 1`;
    - `ignore_index`: the value whose pixels the loss and the metric skip (and that pads label maps).

    Two semantics, with two names:
    - [`encode`] is ours (mmseg's): a value `label_map` does not name becomes `ignore_index`, and `ignore_index`
      itself survives `reduce_labels`. The processor, hence training and evaluation, uses it.
    - [`encode_as_evaluate`] is evaluate's `mean_iou`: values `label_map` does not name are kept, and
      `reduce_labels` maps 0 to 255 whatever `ignore_index` is. Only `fpn_seg.metrics.MeanIoU(reduce_labels=...,
      label_map=...)`, evaluate's drop-in, uses it.

    `description` is for people (error messages, the mark on label PNGs); policies with the same three fields are
    equal whatever their descriptions.
    """

    reduce_labels: bool = False
    label_map: Mapping[int, int] | None = None
    ignore_index: int = 255
    description: str = field(default="", compare=False)

    def __post_init__(self):
        label_map = {int(raw): int(train) for raw, train in self.label_map.items()} if self.label_map else None
        object.__setattr__(self, "label_map", label_map)
        object.__setattr__(self, "reduce_labels", bool(self.reduce_labels))
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    @classmethod
    def of(cls, holder: Any) -> "LabelPolicy":
        """The policy of a `SemanticFPNConfig` (`reduce_labels`) or a `SemanticFPNImageProcessor`
        (`do_reduce_labels`); an option the holder sets to `None` reads as its default."""
        if isinstance(holder, LabelPolicy):
            return holder
        reduce_labels = getattr(holder, "do_reduce_labels", getattr(holder, "reduce_labels", False))
        ignore_index = getattr(holder, "ignore_index", None)
        return cls(
            reduce_labels=bool(reduce_labels),
            label_map=getattr(holder, "label_map", None),
            ignore_index=255 if ignore_index is None else ignore_index,
        )

    # ------------------------------------------------------------------------------------------ applying it

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Raw annotation values (any integer tensor) -> training ids (int64, same shape), `label_map` then
        `reduce_labels`; a value `label_map` does not name becomes `ignore_index`."""
        labels = labels.to(torch.int64)
        if self.label_map:
            if labels.numel() and int(labels.min()) < 0:
                raise ValueError(f"Label maps hold non-negative values; got a minimum of {int(labels.min())}.")
            lookup_size = max(max(self.label_map) + 1, int(labels.max()) + 1 if labels.numel() else 1)
            lookup = torch.full((lookup_size,), self.ignore_index, dtype=torch.int64, device=labels.device)
            for raw, train in self.label_map.items():
                lookup[raw] = train
            labels = lookup[labels]
        if self.reduce_labels:
            ignored = labels == self.ignore_index
            labels = labels - 1
            labels[(labels == -1) | ignored] = self.ignore_index
        return labels

    def encode_as_evaluate(self, references: torch.Tensor) -> torch.Tensor:
        """evaluate's `mean_iou` reading of references (int64 tensor, same shape): `label_map` replaces the values it
        names and keeps the others; `reduce_labels` maps 0 -> 255, `v` -> `v - 1`, 255 stays 255."""
        if self.label_map and references.numel():
            original, references = references, references.clone()
            for raw, train in self.label_map.items():
                references[original == raw] = train
        if self.reduce_labels:
            background = (references == 0) | (references == EVALUATE_REDUCED_BACKGROUND)
            references = torch.where(background, EVALUATE_REDUCED_BACKGROUND, references - 1)
        return references

    # ------------------------------------------------------------------------------------------ handing it on

    def processor_options(self) -> dict[str, Any]:
        """The `SemanticFPNImageProcessor` options that carry this policy."""
        return {"do_reduce_labels": self.reduce_labels, "label_map": self.label_map, "ignore_index": self.ignore_index}

    def describe(self) -> str:
        """One line for messages, e.g. `reduce_labels=True, no label_map, ignore_index=255`."""
        label_map = f"label_map with {len(self.label_map)} entries" if self.label_map else "no label_map"
        return f"reduce_labels={self.reduce_labels}, {label_map}, ignore_index={self.ignore_index}"

    def differences(self, other: "LabelPolicy", mine: str, theirs: str) -> list[str]:
        """One line per field where `other` differs, e.g. `reduce_labels: the labels need True, the processor has
        False` with `mine="the labels need"`, `theirs="the processor has"`."""
        problems = []
        if other.reduce_labels != self.reduce_labels:
            problems.append(f"reduce_labels: {mine} {self.reduce_labels}, {theirs} {other.reduce_labels}")
        if other.label_map != self.label_map:
            problems.append(f"label_map: {mine} {_short_map(self.label_map)}, {theirs} {_short_map(other.label_map)}")
        if other.ignore_index != self.ignore_index:
            problems.append(f"ignore_index: {mine} {self.ignore_index}, {theirs} {other.ignore_index}")
        return problems

    def to_json(self) -> str:
        label_map = None if not self.label_map else {str(raw): train for raw, train in sorted(self.label_map.items())}
        fields = {
            "description": self.description,
            "reduce_labels": self.reduce_labels,
            "label_map": label_map,
            "ignore_index": self.ignore_index,
        }
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LabelPolicy":
        fields = json.loads(text)
        return cls(
            reduce_labels=bool(fields.get("reduce_labels", False)),
            label_map=fields.get("label_map"),
            ignore_index=int(fields.get("ignore_index", 255)),
            description=str(fields.get("description", "")),
        )


def _short_map(label_map: Mapping[int, int] | None) -> str:
    if not label_map:
        return "no label_map"
    items = sorted(label_map.items())
    text = ", ".join(f"{raw}->{train}" for raw, train in items[:6])
    return f"a label_map {{{text}{', ...' if len(items) > 6 else ''}}}"


__all__ = ["EVALUATE_REDUCED_BACKGROUND", "LabelPolicy"]
