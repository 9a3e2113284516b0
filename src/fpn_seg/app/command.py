"""`fpn-seg app`: serve the Gradio page of a model folder (or ONNX export), or write it as a Hugging Face Space.

    fpn-seg app demo_output/model                      # http://127.0.0.1:7860
    fpn-seg app demo_output/onnx --port 8000 --concurrency 2
    fpn-seg app demo_output/onnx --runtime auto          # the fastest correct runtime and precision here
    fpn-seg app demo_output/model --write-space my_space

Examples on the page: `--examples` images, else the demo's held-out scenes next to the model folder when present
(`<folder>/../data/leftImg8bit/val`). Exit status: 0 served (until interrupted) or written; 2 bad arguments, a model
that does not load (with --write-space), or a missing extra.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import run_command
from ..deployment.onnx_folder import PRECISIONS
from ..deployment.runtimes import RUNTIME_CHOICES
from ..image_files import collect_image_inputs
from .service import DEFAULT_MAX_PIXELS

NUM_DEMO_EXAMPLES = 4


def default_examples(source: str) -> list[Path]:
    """The demo's held-out scenes beside a model folder (`make demo`'s layout), at most `NUM_DEMO_EXAMPLES`."""
    scenes = Path(source).parent / "data" / "leftImg8bit" / "val"
    return sorted(scenes.rglob("*.png"))[:NUM_DEMO_EXAMPLES] if scenes.is_dir() else []


def build_parser(prog: str = "fpn-seg app") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a Semantic FPN model folder as a web page (Gradio).")
    parser.add_argument("model", metavar="MODEL_DIR", help="a model folder, an ONNX folder of fpn-seg export, or a hub id")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests segmented at once; others queue (default 1)")
    parser.add_argument("--examples", nargs="+", metavar="PATH", help="example images: files, folders or globs")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default %(default)s)"
    )
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="slide-mode window (default: square)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow running model code shipped with MODEL")
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="torch, onnxruntime or openvino (an ONNX folder), or auto: the fastest correct one for this machine, by "
        "a short probe; the page names it and why (default: torch, or onnxruntime for an ONNX folder)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="the page's default precision (with auto: the one auto keeps to)"
    )
    parser.add_argument("--write-space", type=Path, metavar="DIR", help="write a Hugging Face Space folder instead")
    parser.add_argument("--overwrite", action="store_true", help="with --write-space: replace a folder that is not empty")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`fpn-seg app`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error(f"--concurrency must be at least 1; got {args.concurrency}.")

    def work() -> None:
        examples = (
            [item.path for item in collect_image_inputs(args.examples, argument="--examples")]
            if args.examples else default_examples(args.model)
        )  # fmt: skip
        if args.write_space:
            from .space import write_space

            folder = write_space(args.model, args.write_space, examples, concurrency=args.concurrency,
                                 overwrite=args.overwrite, runtime=args.runtime, precision=args.precision)  # fmt: skip
            print(f"Wrote the Space folder {folder}: push it to a Gradio Space (huggingface-cli upload ...).")
            return
        from .ui import launch_app

        try:
            launch_app(
                args.model, host=args.host, port=args.port, examples=examples, concurrency=args.concurrency,
                max_pixels=args.max_pixels, crop_size=args.crop_size, trust_remote_code=args.trust_remote_code,
                runtime=args.runtime, precision=args.precision,
            )  # fmt: skip
        except KeyboardInterrupt:  # Ctrl-C ends the server
            pass

    return run_command("app", work, usage=(ValueError,))  # ImageInputError and ModelFolderError are ValueErrors


__all__ = ["build_parser", "default_examples", "main"]

if __name__ == "__main__":
    sys.exit(main())
