"""`fpn-seg <command> ...`: one console entry point for the package's commands, and the conventions they share.

Each command is the `main(argv)` of one module, imported only when the command runs (so `fpn-seg --help` does not
load datasets, evaluate or matplotlib); `fpn-seg <command> --help` shows the command's own options. Every `main`
returns its exit status:

- `EXIT_DONE` (0): done;
- `EXIT_FAILED` (1): the work ran and failed, or failed for some inputs (unreadable images, a checksum or a
  verification that does not match, invalid label files);
- `EXIT_USAGE` (2): refused before any work, nothing written: the command line, or what it names (a file, a folder,
  a model, a recipe), cannot be used as given. argparse's own errors exit with 2 too.

Errors are one line on stderr, `fpn-seg <command>: error: <message>`, never a traceback ([`run_command`]).
"""

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence

EXIT_DONE, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Errors that are usage errors whatever the command: a path that does not exist or is of the wrong kind, an output
# that exists, an optional extra that is not installed (its message names the extra).
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    ImportError,
)


class UsageError(ValueError):
    """The command line, or what it names, cannot be used as given (exit status `EXIT_USAGE`)."""


def print_error(command: str, message: object) -> None:
    """The one-line error of a command on stderr: `fpn-seg <command>: error: <message>`."""
    print(f"fpn-seg {command}: error: {message}", file=sys.stderr)


def run_command(
    command: str,
    work: Callable[[], int | None],
    usage: tuple[type[BaseException], ...] = (),
    failed: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command's `work` and return its exit status: what `work` returns (`None` is `EXIT_DONE`), `EXIT_USAGE`
    for a `UsageError`, one of `USAGE_ERRORS` or of `usage`, `EXIT_FAILED` for one of `failed`, each printed by
    [`print_error`]. Other exceptions are bugs and keep their traceback. `usage` is tried first, so it may hold
    subclasses of `failed` classes."""
    try:
        status = work()
    except (UsageError, *USAGE_ERRORS, *usage) as error:
        print_error(command, _message(error))
        return EXIT_USAGE
    except failed as error:
        print_error(command, _message(error))
        return EXIT_FAILED
    return EXIT_DONE if status is None else status


def _message(error: BaseException) -> str:
    """The text of an error (a `KeyError`'s own message, not its repr)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)

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
        return EXIT_DONE if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"fpn-seg {__version__}")
        return EXIT_DONE
    command, *arguments = argv
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        print(f"fpn-seg: unknown command {command!r}.{suggestion} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return EXIT_USAGE
    return importlib.import_module(COMMANDS[command][0]).main(arguments)


__all__ = [
    "COMMANDS",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "USAGE_ERRORS",
    "UsageError",
    "main",
    "print_error",
    "run_command",
    "usage",
]

if __name__ == "__main__":
    sys.exit(main())
