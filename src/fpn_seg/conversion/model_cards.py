"""Model cards of converted folders (hub front matter, the seed table's figures, how the folder was checked) and
the conversion report they are rendered from.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..presets import SemanticFPNPreset, get_preset
from .model_zoo import OFFICIAL_CHECKPOINTS, OfficialCheckpoint, MMSEG_CONFIGS_URL
from .verification import LogitsComparison

_CITATION = """```bibtex
@inproceedings{kirillov2019panoptic,
  title     = {Panoptic Feature Pyramid Networks},
  author    = {Kirillov, Alexander and Girshick, Ross and He, Kaiming and Doll{\\'a}r, Piotr},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}
@misc{mmseg2020,
  title        = {{MMSegmentation}: OpenMMLab Semantic Segmentation Toolbox and Benchmark},
  author       = {MMSegmentation Contributors},
  howpublished = {\\url{https://github.com/open-mmlab/mmsegmentation}},
  year         = {2020}
}
```"""

_DATASET_TITLES = {"cityscapes": "Cityscapes", "ade20k": "ADE20K (ADEChallengeData2016)"}

_MODEL_CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: image-segmentation
tags:
- semantic-segmentation
- semantic-fpn
- mmsegmentation
- fpn_seg
- {dataset}
{model_index}---

# Semantic FPN, ResNet-{depth}, {dataset_title}

Semantic FPN (the semantic branch of Panoptic FPN, Kirillov et al., CVPR 2019) with a ResNetV1c-{depth} backbone,
trained by [mmsegmentation](https://github.com/open-mmlab/mmsegmentation) on {dataset_title}
(config [`{preset}`]({config_url})), converted to a Hugging Face `transformers` model with
`fpn_seg` ({num_labels} classes, `id2label` in `config.json`).

{architecture_note}

## mmsegmentation model-zoo row

| Method | Backbone | Crop size | Lr schd | Mem (GB) | Inf time (fps) | mIoU | mIoU (ms+flip) |
|---|---|---|---:|---:|---:|---:|---:|
{table_row}

## What it reproduces

{reproduces}

## How it was converted and verified

{verification}

## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

repo = "{repo}"
processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo, trust_remote_code=True).eval()

image = Image.open("street.png").convert("RGB")
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
print({{model.config.id2label[int(i)] for i in segmentation.unique()}})
```

With `fpn_seg` installed, `trust_remote_code` is not needed. The image processor resizes to the dataset's test scale
({test_scale}, keeping the aspect ratio) and normalises as mmseg does{reduce_labels_note}.

## License

The weights are mmsegmentation's, released under the Apache License 2.0; this conversion keeps that license.
The training data ({dataset_title}) has its own terms of use.

## Citation

{citation}
"""

_BACKBONE_CARD = """---
license: apache-2.0
library_name: transformers
tags:
- backbone
- resnet
- mmsegmentation
- fpn_seg
---

# ResNetV1c-{depth} (ImageNet), the initialisation of mmseg's sem_fpn models

The ImageNet-trained ResNetV1c-{depth} that mmsegmentation configs name `open-mmlab://{name}`
(mmcv's model zoo), converted to an `fpn_seg` `ResNetV1cBackbone` (deep stem, stride on the 3x3 conv; the ImageNet
classifier `fc.*` is dropped).

Source: `{source}` (sha256 `{sha256}`{hash_note}); {num_tensors} tensors mapped one to one, strictly.

## Start a Semantic FPN training run from it

```python
from fpn_seg.backbone_weights import semantic_fpn_from_pretrained_backbone

model = semantic_fpn_from_pretrained_backbone("{repo}", preset="{example_preset}")  # neck and head: fresh init
```

`load_pretrained_backbone(model, "{repo}")` does the same for a model you already built. As a plain backbone,
`fpn_seg.ResNetV1cBackbone.from_pretrained("{repo}")` returns the four stage features (strides 4 to 32); from the hub
without `fpn_seg`, `AutoBackbone.from_pretrained(repo_id, trust_remote_code=True)`. (transformers 5.x's
`AutoBackbone.from_pretrained` does not accept a local folder: it asks the hub whether the path is a repo.)

## License

Apache License 2.0 (as mmcv / mmsegmentation).
"""


def _model_index(row: OfficialCheckpoint, preset: SemanticFPNPreset) -> str:
    """The hub's `model-index` metadata: mmseg's reported figures, attributed to the model zoo."""
    return (
        "model-index:\n"
        f"- name: {preset.name}\n"
        "  results:\n"
        "  - task: {type: image-segmentation, name: Semantic Segmentation}\n"
        f"    dataset: {{type: {preset.dataset}, name: {_DATASET_TITLES[preset.dataset]} val, split: validation}}\n"
        "    metrics:\n"
        f"    - {{type: mean_iou, value: {row.miou}, name: mIoU (single scale)}}\n"
        f"    - {{type: mean_iou, value: {row.miou_ms_flip}, name: mIoU (multi-scale + flip)}}\n"
        f"    source: {{name: mmsegmentation model zoo, url: '{MMSEG_CONFIGS_URL}'}}\n"
    )


@dataclass
class ConversionReport:
    """What a conversion did: written where, from what, how it was checked."""

    output_dir: Path
    source: str
    sha256: str
    sha256_prefix_checked: str | None
    num_tensors: int
    preset: str | None = None
    official_architecture: bool = True
    class_names_checked: bool = False
    verification: LogitsComparison | None = None
    widths: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"wrote {self.output_dir}",
            f"  source {self.source} (sha256 {self.sha256[:16]}...; "
            f"prefix check: {self.sha256_prefix_checked or 'none'})",
            f"  {self.num_tensors} tensors mapped strictly; meta CLASSES checked: {self.class_names_checked}",
        ]
        if self.verification is not None:
            lines.append("  " + self.verification.summary())
        return "\n".join(lines)


def render_model_card(report: ConversionReport, repo: str) -> str:
    """The `README.md` of a converted sem_fpn folder: model-zoo row, what it reproduces, how it was checked."""
    preset = get_preset(report.preset)
    row = OFFICIAL_CHECKPOINTS[report.preset]
    dataset_title = _DATASET_TITLES[preset.dataset]
    crop = f"{preset.crop_size[0]}x{preset.crop_size[1]}"
    table_row = (
        f"| FPN | R-{preset.depth} | {crop} | {preset.max_iters} | {row.memory_gb} | {row.fps} | {row.miou:.2f} | "
        f"{row.miou_ms_flip:.2f} |"
    )
    if report.official_architecture:
        architecture_note = "Architecture: the official one (stem 64, base width 64, FPN 256 channels, head 128)."
        reproduces = (
            f"The converted model computes the same logits as mmseg's (see below), so evaluated like mmseg on the "
            f"{dataset_title} validation set (whole image at test scale {preset.test_scale[0]}x{preset.test_scale[1]}"
            f", mean IoU over the dataset) it should give the table's mIoU **{row.miou:.2f}** (single scale) and "
            f"**{row.miou_ms_flip:.2f}** with multi-scale + flip testing. These figures are mmsegmentation's; this "
            "conversion did not re-run the evaluation."
        )
        if report.sha256_prefix_checked != row.sha256_prefix:
            reproduces += (
                f" **Caveat:** the source file was not identified as the model zoo's `{row.filename}` (whose sha256 "
                f"starts with `{row.sha256_prefix}`), so the figures hold only if these are its weights."
            )
    else:
        widths = ", ".join(f"{key} {value}" for key, value in report.widths.items())
        architecture_note = (
            f"**Not the official width**: this file was converted from a narrowed checkpoint ({widths}); it has the "
            "sem_fpn layout and label set of the preset, but the table's figures do not apply to it."
        )
        reproduces = "Nothing from the table: the weights are not the model zoo's (see the note above)."
    verification = [
        f"- Source: `{report.source}`, sha256 `{report.sha256}`"
        + (
            f" (its prefix `{report.sha256_prefix_checked}` matches the model-zoo file name)."
            if report.sha256_prefix_checked
            else " (no hash prefix to check)."
        ),
        "- Read with `torch.load(weights_only=True)`; every one of the "
        f"{report.num_tensors} tensors mapped exactly once onto the model, shapes checked (no missing or "
        "unexpected key).",
        "- `meta['CLASSES']` equals the label names in `config.json`."
        if report.class_names_checked
        else "- The checkpoint holds no `meta['CLASSES']`; label names come from the preset.",
        "- fpn_seg's model matches mmsegmentation 1.2.2's `sem_fpn` logits on reference inputs to <= 1e-5 (its "
        "test suite, with the real mmseg model code).",
    ]
    if report.sha256_prefix_checked == row.sha256_prefix:
        verification.insert(0, f"- This is the model zoo's file [`{row.filename}`]({row.url}).")
    if report.verification is not None:
        verification.append(
            f"- Logits of this folder on `{report.verification.reference}` (reference made with mmsegmentation): "
            f"max abs diff **{report.verification.max_abs_diff:.2e}**, argmax agreement "
            f"**{100 * report.verification.argmax_agreement:.4f}%** of {report.verification.num_pixels} pixels."
        )
    return _MODEL_CARD.format(
        dataset=preset.dataset,
        model_index=_model_index(row, preset) if report.official_architecture else "",
        depth=preset.depth,
        dataset_title=dataset_title,
        preset=preset.name,
        config_url=f"{MMSEG_CONFIGS_URL}/{row.mmseg_v1_config}.py",
        num_labels=preset.num_labels,
        architecture_note=architecture_note,
        table_row=table_row,
        reproduces=reproduces,
        verification="\n".join(verification),
        repo=repo,
        test_scale=f"{preset.test_scale[0]}x{preset.test_scale[1]}",
        reduce_labels_note=(
            "; `do_reduce_labels=True`: ADE20K annotations (0 = other) map 0 -> 255 and v -> v - 1"
            if preset.reduce_labels
            else ""
        ),
        citation=_CITATION,
    )


def render_backbone_card(report: ConversionReport, name: str, depth: int, repo: str, example_preset: str) -> str:
    """The `README.md` of a converted ImageNet backbone folder (`name`: e.g. `resnet50_v1c`)."""
    return _BACKBONE_CARD.format(
        depth=depth,
        name=name,
        source=report.source,
        sha256=report.sha256,
        hash_note=f", prefix `{report.sha256_prefix_checked}` checked" if report.sha256_prefix_checked else "",
        num_tensors=report.num_tensors,
        repo=repo,
        example_preset=example_preset,
    )


__all__ = ["ConversionReport", "render_backbone_card", "render_model_card"]
