"""`fpn-seg predict`'s processing loop as a pipeline: decoding, the model and the PNG writing overlap.

    files --(decode threads)--> uint8 images --(batches, the model's device)--> label maps --(writer threads)--> PNGs

- A pool of decoding threads reads the images ahead of the model, in order (Pillow and zlib release the GIL), at
  most a few batches ahead so that memory stays bounded; an unreadable image becomes a failure naming the file.
- The main thread runs [`SemanticSegmenter.segment_batch`] on each batch (preprocessing, the model, resizing and
  argmax on the model's device); on a GPU the overlay's colour blend runs there too. Only the label maps (as 8 or
  16-bit ids) and the blended images come back.
- A pool of writer threads writes `<stem>_label.png` (the same bytes as `save_label_png` always wrote) and
  `<stem>_overlay.png` (blended by table lookup, the legend drawn once per set of classes, zlib's fastest level),
  each atomically, and counts the classes' pixels; at most a few batches of writes wait, so the model never waits
  for the disk unless the writers fall behind.

The progress bar counts finished images (written or failed) and shows images per second.
"""

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import write_file_atomically
from .image_files import ImageInput, ImageReadError, read_image
from .segmenter import SemanticSegmenter
from .visualize import blend, class_pixel_counts, overlay_array, palette_for, save_label_png, save_overlay_png


def default_workers() -> int:
    """Threads per pool: the CPUs this process may use, at least 1 and at most 16."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, available))


@dataclass
class PredictResult:
    """What a run did: images written, failures `(path, reason)` in input order, pixel counts per class."""

    processed: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    pixel_counts: np.ndarray | None = None


@dataclass
class PredictPipeline:
    """Segment `ImageInput`s with `segmenter` and write their PNGs (see the module docstring).

    `outputs_of(item)` gives the files of an image (label PNG, then the overlay PNG when `with_overlay`);
    `check_labels(label_map, path)` may refuse a label map (raising stops the run); `segment_options` are the mode's
    options of `SemanticSegmenter.segment_batch` (mode, crop_size, stride, scales, flip).
    """

    segmenter: SemanticSegmenter
    outputs_of: Callable[[ImageInput], list[Path]]
    check_labels: Callable[[torch.Tensor, Path], None]
    segment_options: dict
    batch_size: int = 1
    with_overlay: bool = True
    alpha: float = 0.5
    max_pixels: int | None = None
    workers: int = field(default_factory=default_workers)

    def __post_init__(self):
        config = self.segmenter.model.config
        self.num_labels, self.id2label = config.num_labels, config.id2label
        self.ignore_index = getattr(config, "ignore_index", 255)
        self.palette = palette_for(self.id2label)
        self.device = self.segmenter.device

    def run(self, inputs: list[ImageInput], progress=None) -> PredictResult:
        """Segment every input and write its PNGs; `progress` (a tqdm bar, optional) advances per finished image."""
        result = PredictResult(pixel_counts=np.zeros(self.num_labels, dtype=np.int64))
        failures: dict[int, tuple[Path, str]] = {}
        ahead = max(2 * self.batch_size, self.workers)  # images decoded ahead of the model
        max_pending_writes = max(2 * self.batch_size, self.workers)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="fpn-seg-read") as readers, \
                ThreadPoolExecutor(self.workers, thread_name_prefix="fpn-seg-write") as writers:  # fmt: skip
            pending_writes: deque[Future] = deque()
            try:
                for batch in self._batches(inputs, readers, ahead, failures, progress):
                    for write in self._segment_and_write(batch, writers, failures, progress):
                        pending_writes.append(write)
                    while len(pending_writes) > max_pending_writes:  # bounded memory: wait for the oldest writes
                        self._finish(pending_writes.popleft(), result)
                while pending_writes:
                    self._finish(pending_writes.popleft(), result)
            except BaseException:
                for write in pending_writes:
                    write.cancel()
                readers.shutdown(wait=True, cancel_futures=True)
                raise
        result.failures = [failures[index] for index in sorted(failures)]
        return result

    # ------------------------------------------------------------------------------------------ stages

    def _batches(self, inputs, readers, ahead, failures, progress) -> Iterable[list[tuple[int, ImageInput, Tensor]]]:
        """Decoded images in input order, in batches of `batch_size`; read failures are recorded as they come."""
        reads: deque[tuple[int, ImageInput, Future]] = deque()
        position, batch = 0, []
        while position < len(inputs) or reads:
            while position < len(inputs) and len(reads) < ahead:
                item = inputs[position]
                reads.append((position, item, readers.submit(read_image, item.path, self.max_pixels)))
                position += 1
            index, item, read = reads.popleft()
            try:
                batch.append((index, item, read.result()))
            except ImageReadError as error:
                failures[index] = (item.path, str(error))
                _advance(progress)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _segment_and_write(self, batch, writers, failures, progress) -> list[Future]:
        """Segment one batch on the device and hand each image's outputs to the writers."""
        images = [image for _, _, image in batch]
        maps, _, out_of_memory = self.segmenter.segment_batch(
            images, names=[str(item.path) for _, item, _ in batch], **self.segment_options
        )
        writes = []
        for position, ((index, item, image), label_map) in enumerate(zip(batch, maps)):
            if position in out_of_memory:
                error = out_of_memory[position]
                failures[index] = (item.path, f"out of memory even alone ({error.size[0]}x{error.size[1]}); try "
                                   "--mode slide, --precision fp16 or --device cpu")  # fmt: skip
                _advance(progress)
                continue
            self.check_labels(label_map, item.path)
            ids = label_map.to(torch.uint8 if self.num_labels <= 256 else torch.int32)
            blended = None
            if self.with_overlay and label_map.device.type != "cpu":  # blend where the label map is: the GPU
                blended = blend(image.to(label_map.device).permute(1, 2, 0), label_map, self.palette, self.alpha,
                                self.ignore_index).cpu().numpy()  # fmt: skip
            writes.append(writers.submit(self._write, item, ids.cpu().numpy(), image, blended, progress))
        return writes

    def _write(self, item: ImageInput, label_map: np.ndarray, image: torch.Tensor, blended, progress) -> np.ndarray:
        """Write one image's PNGs (atomically); returns its class pixel counts."""
        label_path, *overlay_path = self.outputs_of(item)
        write_file_atomically(label_path, lambda path: save_label_png(label_map, path))
        counts = class_pixel_counts(label_map, self.num_labels)
        if overlay_path:
            if blended is None:
                rgb = image.permute(1, 2, 0).numpy()  # upright, as segmented
                blended = blend(rgb, label_map, self.palette, self.alpha, self.ignore_index)
            picture = overlay_array(blended, counts, self.id2label, self.palette, self.ignore_index)
            write_file_atomically(overlay_path[0], lambda path: save_overlay_png(picture, path))
        _advance(progress)
        return counts

    @staticmethod
    def _finish(write: Future, result: PredictResult) -> None:
        result.pixel_counts += write.result()
        result.processed += 1


def _advance(progress) -> None:
    if progress is not None:
        progress.update(1)


__all__ = ["PredictPipeline", "PredictResult", "default_workers"]
