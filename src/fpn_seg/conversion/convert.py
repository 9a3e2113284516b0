"""Convert mmsegmentation `sem_fpn` checkpoints (and ImageNet ResNetV1c initialisations) into fpn_seg model folders,
and the `fpn-seg convert` command.

    fpn-seg convert --model fpn_r50_512x1024_80k_cityscapes --output-dir converted/fpn_r50_cityscapes
    fpn-seg convert --checkpoint local.pth --preset fpn_r50_512x512_160k_ade20k --output-dir out --verify ref.npz
    fpn-seg convert --backbone resnet50_v1c --output-dir converted/resnet50_v1c
    fpn-seg convert --converted out --verify ref.npz          # check a folder that was converted before

Safety and strictness:
- checkpoints are read with `torch.load(weights_only=True)` only; a file that needs arbitrary unpickling is refused;
- a file named `<name>-<hex>.pth` (the model-zoo convention) must have a sha256 starting with `<hex>`;
- every key is mapped exactly once onto the target model (see `state_dict`), shapes checked;
- mmseg's class names (`meta["CLASSES"]`, or mmseg 1.x's `meta["dataset_meta"]["classes"]`), when present, must equal
  the preset's;
- the output folder is written under a temporary sibling name and renamed into place at the end, so a refusal
  leaves nothing behind; an existing, non-empty output folder is only replaced with `overwrite=True`.

A converted backbone folder is an ordinary transformers backbone folder: training puts it into a new model with
`fpn_seg.backbone_weights.semantic_fpn_from_pretrained_backbone`.
"""

import argparse
import os
import sys
from pathlib import Path

from ..atomic import atomic_output_dir, check_output_dir
from ..backbone_weights import CheckpointMismatchError
from ..cli import run_command
from ..presets import PRESETS, get_preset, preset_processor
from .checkpoints import (
    OFFICIAL_WIDTHS,
    architecture_widths,
    build_imagenet_backbone,
    build_semantic_fpn,
    check_class_names,
    infer_backbone_config,
    infer_semantic_fpn_config,
    load_checkpoint,
)
from .model_cards import ConversionReport, render_backbone_card, render_model_card
from .model_zoo import (
    IMAGENET_BACKBONES,
    OFFICIAL_CHECKPOINTS,
    ConversionArgumentError,
    ConversionError,
    OutputExistsError,
    fetch_verified,
    get_imagenet_backbone,
    get_official_checkpoint,
)
from .verification import verify_converted


def convert_semantic_fpn(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    preset: str | None = None,
    model: str | None = None,
    verify: str | os.PathLike | None = None,
    tolerance: float = 1e-4,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> ConversionReport:
    """Convert a mmseg sem_fpn checkpoint into a complete model folder.

    Args:
        checkpoint: local path or URL of the `.pth`; `None` with `model` downloads the model-zoo file.
        output_dir: the folder to write (refused when it exists and is not empty, unless `overwrite`).
        preset: preset name (labels, label policy, test scale); implied by `model`.
        model: a model-zoo name: the file must then have the model zoo's sha256 prefix.
        verify: a reference `.npz`; the written folder is loaded back and its logits compared. A max abs diff above
            `tolerance` refuses the conversion.
        repo_id: the hub name used in the model card's usage snippet (defaults to the output folder).

    Raises [`ConversionError`] (and its subclasses) or [`CheckpointMismatchError`]; nothing is written then.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir.absolute(), overwrite, refuse=OutputExistsError)
    official = get_official_checkpoint(model) if model is not None else None
    if official is not None and preset not in (None, official.preset):
        raise ConversionArgumentError(f"--model {model} is preset {official.preset!r}, not --preset {preset!r}.")
    preset = official.preset if official is not None else preset
    if preset is None:
        raise ConversionArgumentError(
            f"Give --model NAME, or --checkpoint with --preset NAME (one of: {', '.join(PRESETS)})."
        )
    preset_info = get_preset(preset)  # an unknown name is refused before any download
    path, sha256, expected_prefix = fetch_verified(checkpoint, official)
    loaded = load_checkpoint(path)
    source = str(checkpoint if checkpoint is not None else official.url)
    classes_checked = check_class_names(loaded.meta, preset_info, source=str(path))
    config = infer_semantic_fpn_config(loaded.state_dict, preset, source=str(path))
    network = build_semantic_fpn(loaded.state_dict, config, source=str(path))
    widths = architecture_widths(config)
    report = ConversionReport(
        output_dir=output_dir,
        source=source,
        sha256=sha256,
        sha256_prefix_checked=expected_prefix,
        num_tensors=len(loaded.state_dict),
        preset=preset,
        official_architecture=widths == OFFICIAL_WIDTHS,
        class_names_checked=classes_checked,
        widths=widths,
    )
    with atomic_output_dir(output_dir, overwrite, refuse=OutputExistsError) as staging:
        network.save_pretrained(str(staging))
        preset_processor(preset).save_pretrained(str(staging))
        if verify is not None:
            report.verification = verify_converted(staging, verify)
            if not report.verification.max_abs_diff <= tolerance:
                raise ConversionError(
                    f"--verify {verify}: max abs diff {report.verification.max_abs_diff:.3e} exceeds the tolerance "
                    f"{tolerance:g}; the converted model does not reproduce the reference. Nothing was written."
                )
        (staging / "README.md").write_text(render_model_card(report, repo_id or str(output_dir)))
    return report


def convert_imagenet_backbone(
    checkpoint: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    backbone: str | None = None,
    depth: int | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> ConversionReport:
    """Convert an ImageNet ResNetV1c file (`open-mmlab://resnet50_v1c`, bare `stem.*`/`layer*` keys, `fc.*` dropped)
    into a backbone folder that `AutoBackbone.from_pretrained` and [`semantic_fpn_from_pretrained_backbone`] load.

    `backbone` names a known file (its sha256 prefix is then required, and `checkpoint` may point to a local copy);
    otherwise `checkpoint` is required and `depth` is checked against (or read from) the keys.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir.absolute(), overwrite, refuse=OutputExistsError)
    known = get_imagenet_backbone(backbone) if backbone is not None else None
    if known is not None:
        if depth is not None and depth != known.depth:
            raise ConversionArgumentError(
                f"--backbone {backbone} is ResNet-{known.depth}, not --backbone-depth {depth}."
            )
        depth = known.depth
    elif checkpoint is None:
        raise ConversionArgumentError(
            "Backbone mode needs --backbone NAME or --checkpoint PATH (with --backbone-depth)."
        )
    path, sha256, expected_prefix = fetch_verified(checkpoint, known)
    loaded = load_checkpoint(path)
    keys = {key.removeprefix("backbone."): value for key, value in loaded.state_dict.items()}
    config = infer_backbone_config(keys, "", depth, source=str(path))
    network = build_imagenet_backbone(keys, config, source=str(path))
    source = str(checkpoint if checkpoint is not None else known.url)
    report = ConversionReport(output_dir, source, sha256, expected_prefix, num_tensors=len(network.state_dict()))
    example = next((name for name, item in PRESETS.items() if item.depth == config.depth), next(iter(PRESETS)))
    with atomic_output_dir(output_dir, overwrite, refuse=OutputExistsError) as staging:
        network.save_pretrained(str(staging))
        name = known.name if known is not None else f"resnet{config.depth}_v1c"
        card = render_backbone_card(report, name, config.depth, repo_id or str(output_dir), example)
        (staging / "README.md").write_text(card)
    return report


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload a converted folder to the hub (creates the repo if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message="Add Semantic FPN weights converted from mmseg"
    )
    return str(commit)


def official_table() -> str:
    """The model-zoo rows this converter knows, as a markdown table."""
    lines = ["| --model | dataset | backbone | mIoU | mIoU (ms+flip) | file |", "|---|---|---|---:|---:|---|"]
    for row in OFFICIAL_CHECKPOINTS.values():
        preset = row.preset_info
        lines.append(
            f"| {row.preset} | {preset.dataset} | R-{preset.depth} | {row.miou:.2f} | {row.miou_ms_flip:.2f} | "
            f"{row.filename} |"
        )
    for backbone in IMAGENET_BACKBONES.values():
        lines.append(f"| --backbone {backbone.name} | ImageNet | R-{backbone.depth} | | | {backbone.filename} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpn-seg-convert",
        description="Convert mmsegmentation sem_fpn checkpoints (or ImageNet ResNetV1c files) to fpn_seg folders.",
    )
    source = parser.add_argument_group("what to convert")
    source.add_argument("--model", help=f"a model-zoo checkpoint: {', '.join(OFFICIAL_CHECKPOINTS)}")
    source.add_argument("--checkpoint", help="local path or URL of a .pth (with --model: a local copy of it)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="labels and settings for --checkpoint")
    source.add_argument("--backbone", help=f"backbone mode: {', '.join(IMAGENET_BACKBONES)} (open-mmlab:// names too)")
    source.add_argument("--backbone-depth", type=int, help="backbone mode with --checkpoint: 50 or 101")
    source.add_argument("--converted", help="check an already converted folder against --verify (no conversion)")
    parser.add_argument("--output-dir", help="folder to write (refused if it exists and is not empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--verify", help="reference .npz (pixel_values, logits): compare the converted model's logits")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference --verify accepts")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the written folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument("--list", action="store_true", help="print the known checkpoints and exit")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.list:
        print(official_table())
        return
    if args.converted is not None:
        if args.verify is None:
            parser.error("--converted needs --verify REFERENCE.npz")
        comparison = verify_converted(args.converted, args.verify)
        print(comparison.summary())
        if not comparison.max_abs_diff <= args.tolerance:
            raise ConversionError(f"max abs diff {comparison.max_abs_diff:.3e} exceeds --tolerance {args.tolerance:g}")
        return
    if args.output_dir is None:
        parser.error("--output-dir is required")
    repo = args.push_to_hub
    if args.backbone is not None or args.backbone_depth is not None:
        if args.model or args.preset or args.verify:
            parser.error("backbone mode (--backbone / --backbone-depth) takes no --model, --preset or --verify")
        report = convert_imagenet_backbone(
            args.checkpoint, args.output_dir, args.backbone, args.backbone_depth, args.overwrite, repo
        )
    else:
        if args.model is None and args.checkpoint is None:
            parser.error("give --model NAME, --checkpoint PATH --preset NAME, or --backbone NAME")
        report = convert_semantic_fpn(
            args.checkpoint, args.output_dir, args.preset, args.model, args.verify, args.tolerance, args.overwrite, repo
        )
    print(report.summary())
    if repo is not None:
        print(f"pushed to https://huggingface.co/{repo}: {push_folder_to_hub(report.output_dir, repo, args.private)}")


def main(argv: list[str] | None = None) -> int:
    """`fpn-seg convert`; returns the exit status: 0 written, 1 the checkpoint was refused (checksum, keys, shapes,
    verification), 2 the arguments cannot be used (an unknown name, a missing file, an output folder that exists)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(
        "convert", lambda: _run(args, parser), usage=(ConversionArgumentError,),
        failed=(ConversionError, CheckpointMismatchError),
    )  # fmt: skip


__all__ = [
    "build_parser",
    "convert_imagenet_backbone",
    "convert_semantic_fpn",
    "main",
    "official_table",
    "push_folder_to_hub",
]

if __name__ == "__main__":
    sys.exit(main())
