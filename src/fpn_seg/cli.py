"""`fpn-seg <command> ...`: one console entry point for the package's commands.

Each command is the `command_line(argv)` or `main(argv)` of one module, imported only when the command runs (so
`fpn-seg --help` does not load datasets, evaluate or matplotlib); `fpn-seg <command> --help` shows the command's own
options.
"""

import difflib
import importlib
import sys
from collections.abc import Sequence

# command -> (module whose `main(argv)` runs it, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("fpn_seg.predict", "segment images with a saved model: label PNGs and colour overlays"),
    "train": ("fpn_seg.train", "fine-tune Semantic FPN with the transformers Trainer (mmseg recipes)"),
    "prepare": ("fpn_seg.data.prepare", "check official Cityscapes / ADE20K folders or zips, write Parquet"),
    "synthetic": ("fpn_seg.data.synthetic", "write a synthetic street-scene dataset in the Cityscapes layout"),
    "convert": ("fpn_seg.conversion.convert", "convert mmseg sem_fpn checkpoints into verified model folders"),
    "export": ("fpn_seg.deployment.export", "export a model folder to ONNX (float32, and static int8 with --int8)"),
    "app": ("fpn_seg.app.command", "serve a model folder as a web page (Gradio), or write it as a Hugging Face Space"),
}


def usage() -> str:
    """The text of `fpn-seg --help`: the commands, one line each."""
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: fpn-seg <command> [options]", "", "Semantic FPN (mmsegmentation's sem_fpn) for transformers.", "",
             "commands:"]  # fmt: skip
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "Run `fpn-seg <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `fpn-seg <command> ...` to the command's module; returns the command's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"fpn-seg {__version__}")
        return 0
    command, *arguments = argv
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        print(f"fpn-seg: unknown command {command!r}.{suggestion} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # A module's `command_line(argv)` when it has one (`train`: its `main` returns metrics and raises), else `main`.
    return getattr(module, "command_line", module.main)(arguments)


__all__ = ["COMMANDS", "main", "usage"]

if __name__ == "__main__":
    sys.exit(main())
