"""The app's model service, without any web framework: a model folder (torch, or an ONNX export) loaded once and
prepared once (`fpn_seg.SemanticSegmenter`, the library's one inference path; fp32 and bf16 share the prepared
copy), and one image file -> label map, overlay, class shares and time.
"""

import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image_files import ImageReadError, read_image
from ..model_folders import ModelFolderError
from ..segmenter import MMSEG_MS_RATIOS, SemanticSegmenter, default_stride
from ..visualize import class_pixel_counts, overlay, save_label_png, save_overlay_png

MODES = ("whole", "slide", "ms+flip")
DEFAULT_MAX_PIXELS = 25_000_000
OUTPUT_MAX_AGE_S = 600  # label PNGs written for downloads are removed after this long (gradio keeps its own copy)


class AppError(Exception):
    """A request the app cannot serve (not an image, too large, no model); the message is shown in the page."""


@dataclass
class SegmentationResult:
    """What the app shows for one image."""

    label_map: torch.Tensor  # (H, W) int64 class ids at the image's size
    overlay: Image.Image  # the image blended with the class colours, with a legend
    classes: list[tuple[str, float, int]]  # (class name, share of pixels in %, pixels), largest first
    seconds: float  # segmentation time (reading and drawing not counted)
    label_png: Path  # the label map as a PNG of class ids, for download
    overlay_png: Path  # the overlay as a PNG file


@dataclass
class SegmentationService:
    """A Semantic FPN model folder, ready to segment image files.

    `source` is a model folder or hub id (`AutoModelForSemanticSegmentation`), or an ONNX folder of `fpn-seg export`,
    loaded with `runtime` (see `fpn_seg.deployment.load_runtime`; "auto" takes the fastest correct runtime and
    precision for this machine, which the page then starts with and names).
    The model loads once; a folder that does not load leaves `load_error` set (and every request refused with it)
    instead of failing, so that the page can say why. Requests may run concurrently.
    """

    source: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    crop_size: tuple[int, int] | None = None  # the slide windows; default: the test scale's short side, square
    trust_remote_code: bool = False
    runtime: str | None = None  # torch, onnxruntime, openvino or auto; None: torch, or onnxruntime for an ONNX folder
    precision: str | None = None  # the page's default precision (with auto: what auto may choose among)
    # Set by loading, not arguments:
    load_error: str | None = field(default=None, init=False)
    kind: str = field(default="torch", init=False)  # "torch" or "onnx"
    precisions: tuple[str, ...] = field(default=(), init=False)
    choice: object = field(default=None, init=False, repr=False)  # the RuntimeChoice: what runs by default, and why
    _segmenters: dict = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        self._outputs = tempfile.TemporaryDirectory(prefix="fpn_seg_app_")
        try:
            self._load()
        except (ModelFolderError, ImportError, OSError, ValueError) as error:
            self.load_error = f"The model {self.source!r} does not load: {error}"

    def _load(self) -> None:
        from ..deployment.onnx_folder import PRECISIONS
        from ..deployment.runtimes import folder_kinds, load_runtime, offered_precisions

        kinds = folder_kinds(self.source)
        requested = self.runtime or ("torch" if "torch" in kinds else "onnxruntime")
        model, self.processor, self.choice = load_runtime(self.source, requested, self.precision,
                                                          trust_remote_code=self.trust_remote_code)  # fmt: skip
        self.runtime = self.choice.runtime
        self.kind = "torch" if self.runtime == "torch" else "onnx"
        offered = offered_precisions(self.runtime, self.source)  # and the one loaded (torch bf16: emulated here)
        self.precisions = tuple(p for p in PRECISIONS if p in offered or p == self.choice.precision)
        if self.kind == "torch":  # one prepared (optimised) copy of the model, shared by fp32 and bf16 (autocast)
            for precision in self.precisions:
                self._segmenters[precision] = SemanticSegmenter(model, self.processor, precision=precision)
        else:
            self._segmenters[self.choice.precision] = SemanticSegmenter(model, self.processor)
        if requested == "auto":
            print(f"fpn-seg app: runtime auto chose {self.choice.summary()}")
        self.config = model.config
        short_side = min(self.processor.scale) if self.processor.scale else 512
        self.crop_size = tuple(self.crop_size or (short_side, short_side))

    @property
    def default_precision(self) -> str:
        """The precision the page starts with: the one loaded (auto's choice, or the one asked for)."""
        return self.choice.precision if self.choice is not None else "fp32"

    def _segmenter(self, precision: str) -> SemanticSegmenter:
        """The segmenter of `precision`: torch's bf16 runs the fp32 copy under autocast; an ONNX runtime's other
        precisions load once, on first use."""
        if precision not in self.precisions:
            raise AppError(f"precision {precision!r} is not available here; choose one of {list(self.precisions)}.")
        with self._lock:  # loaded once, even when two requests ask at the same moment
            if precision not in self._segmenters:
                from ..deployment.runtimes import runtime_class

                model = runtime_class(self.runtime).from_pretrained(self.source, precision)
                self._segmenters[precision] = SemanticSegmenter(model, self.processor)
        return self._segmenters[precision]

    @property
    def title(self) -> str:
        """The page's title: the model folder with its parent (`demo_output/model`), or the hub id."""
        path = Path(self.source)
        name = f"{path.parent.name}/{path.name}" if path.is_dir() and path.parent.name else self.source
        return f"Semantic FPN: {name}" + (" (ONNX)" if self.kind == "onnx" else "")

    def describe(self) -> str:
        """One line on the model: classes, backbone, runtime."""
        if self.load_error:
            return self.load_error
        backbone = getattr(self.config.backbone_config, "model_type", "?")
        depth = getattr(self.config.backbone_config, "depth", None)
        from ..deployment.runtime_choice import RUNTIME_NAMES

        runtime = "PyTorch" if self.runtime == "torch" else RUNTIME_NAMES[self.runtime]
        line = (f"{self.config.num_labels} classes, backbone {backbone}{f'-{depth}' if depth else ''}, test size "
                f"{self.processor.size}, {runtime}.")  # fmt: skip
        if self.choice is not None and self.choice.reason != "asked for":
            line += f" Runtime auto chose {self.choice.summary()}."
        return line

    def segment_file(self, path: str | os.PathLike, mode: str = "whole", precision: str = "fp32") -> SegmentationResult:
        """Segment one image file with mmseg's test `mode` ("whole", "slide" or "ms+flip") at `precision`."""
        if self.load_error:
            raise AppError(self.load_error)
        if mode not in MODES:
            raise AppError(f"mode {mode!r} is not one of {list(MODES)}.")
        segmenter = self._segmenter(precision)
        path = Path(path)
        try:
            image = read_image(path, self.max_pixels)
        except ImageReadError as error:
            raise AppError(f"{path.name}: {error}") from None
        options = {
            "whole": {},
            "slide": {"mode": "slide", "crop_size": self.crop_size, "stride": default_stride(self.crop_size)},
            "ms+flip": {"scales": MMSEG_MS_RATIOS, "flip": True},
        }[mode]
        start = time.perf_counter()
        (label_map,) = segmenter.segment(image, **options)
        seconds = time.perf_counter() - start
        picture = overlay(Image.fromarray(image.permute(1, 2, 0).numpy()), label_map, self.config.id2label,
                          ignore_index=getattr(self.config, "ignore_index", 255))  # fmt: skip
        label_png, overlay_png = self._write_outputs(label_map, picture, path)
        return SegmentationResult(label_map, picture, self._class_shares(label_map), seconds, label_png, overlay_png)

    def _class_shares(self, label_map: torch.Tensor) -> list[tuple[str, float, int]]:
        counts = class_pixel_counts(label_map, self.config.num_labels)
        total = max(int(counts.sum()), 1)
        order = np.argsort(-counts, kind="stable")
        return [(self.config.id2label[int(i)], round(100 * counts[i] / total, 2), int(counts[i])) for i in order if counts[i]]

    def _write_outputs(self, label_map: torch.Tensor, picture: Image.Image, image_path: Path) -> tuple[Path, Path]:
        """Write `<image stem>_label.png` (class ids) and `<image stem>_overlay.png` in a folder of their own.

        Each file carries a PNG text chunk with a request id: gradio caches result files by content, and two
        concurrent requests with identical results would otherwise share (and race on) one cached file. Folders
        older than `OUTPUT_MAX_AGE_S` are removed (gradio keeps its own copy), so disk use stays flat."""
        root, now = Path(self._outputs.name), time.time()
        for old in root.iterdir():
            if now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=root))
        text = {"fpn_seg:request": uuid.uuid4().hex}
        label_png, overlay_png = folder / f"{image_path.stem}_label.png", folder / f"{image_path.stem}_overlay.png"
        save_label_png(label_map, label_png, text)
        save_overlay_png(picture, overlay_png, text)
        return label_png, overlay_png


__all__ = ["DEFAULT_MAX_PIXELS", "MODES", "AppError", "SegmentationResult", "SegmentationService"]
