"""The training library: [`SemanticFPNTrainer`] (mmseg's optimiser, exact multi-process evaluation, augmentation on
the training device) and the deterministic training order and augmentation ([`EpochShuffleSampler`],
[`AugmentedTrainDataset`]) that make resumed runs equal uninterrupted ones. The `fpn-seg train` script
(`fpn_seg.train`) sits on top.

**Where the augmentation runs** (`AugmentedTrainDataset(augment_on=...)`):

- `"workers"`: each DataLoader worker reads an example and runs mmseg's augmentation on it (OpenCV's kernels when
  OpenCV is installed, else the torch ones), returning the uint8 crop and its training ids;
- `"device"`: the workers decode and make every random draw and decision ([`TrainTransform.plan_example`]: the
  resize ratio, the crop (its `cat_max_ratio` test runs on the cheap label map), the flip, the colour distortion's
  tables) and crop the label map; [`SemanticFPNTrainer.training_step`] does the image's share (resize inside the
  crop, flip, colour distortion: [`TrainTransform.apply_plan`]) on the model's device with the torch kernels, without
  a device synchronisation, so the CPU keeps running ahead of the GPU.

Either way the batch is a dict of lists (sizes may differ), moved to the device by the Trainer's DataLoader (pinned,
non-blocking when configured), and `training_step` normalises and pads it on the device. Both paths draw from the same
per-example CPU generator, seeded by `(seed, epoch, index)`, and their kernels give the same bytes: for the same run,
the two paths train on the same tensors, and a resumed run replays the uninterrupted one's augmentations.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from .data import TrainTransform
from .data.image_ops import TorchImageOps, opencv_hsv_matches
from .data.reading import ReadingLog, TrainingDataError, example_files, read_training_example, storage_columns
from .data.augmentation import AugmentationPlan, mix_seed
from .data.transforms import single_threaded
from .metrics.trainer import TRAINER_PADDING_INDEX

AUGMENT_ON = ("workers", "device")


class TrainingExample(NamedTuple):
    """An item of [`AugmentedTrainDataset`] (a tuple, so that the Trainer's column removal leaves it whole)."""

    image: torch.Tensor  # uint8 (3, h, w) augmented crop, or the (3, H, W) decoded image when `plan` is set
    label: torch.Tensor  # int64 (h, w) training ids of the augmented crop (both paths)
    key: tuple[int, int]  # (epoch, index)
    source: str  # the example's files, for messages
    plan: AugmentationPlan | None  # the image's share of the augmentation still to do (device path), else None

# Where [`SemanticFPNTrainer`] keeps the training arguments in a checkpoint (JSON, not the Trainer's pickle).
TRAINING_ARGS_JSON = "training_args.json"


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation of `range(num_examples)` per epoch, seeded by `(seed, epoch)`, yielding `(epoch, index)` keys for
    [`AugmentedTrainDataset`]. The Trainer (through accelerate) calls `set_epoch` before each epoch, the resumed one
    included, and shards the batches across processes."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        for index in torch.randperm(self.num_examples, generator=generator).tolist():
            yield self.epoch, index


class AugmentedTrainDataset(torch.utils.data.Dataset):
    """The training split through mmseg's augmentation ([`TrainTransform`]), keyed by `(epoch, index)`.

    Each example's random draws come from a generator seeded by `(seed, epoch, index)`, not from a global RNG, so
    they do not depend on what was fetched before: a run resumed from a checkpoint sees exactly the crops of the
    uninterrupted run (the DataLoader fetches ahead of the step being trained, and the Trainer restores its RNG
    states only after the first batch of the resumed epoch), whatever the number of workers or processes.

    `augment_on="workers"` augments in `__getitem__` (a DataLoader worker); `"device"` only plans there and leaves
    the image's share of the augmentation to [`prepare_batch`] on the training device (the module docstring compares
    them). Items are [`TrainingExample`]s: the uint8 crop (workers) or the decoded uint8 image and its
    [`AugmentationPlan`] (device), with the training ids of the crop, not yet normalised or padded. Collate with
    [`collate_training_examples`].
    """

    def __init__(self, dataset: Dataset, transform: TrainTransform, seed: int, augment_on: str = "workers"):
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}; got {augment_on!r}.")
        columns = [transform.image_column, transform.label_column]
        self.dataset, self.transform, self.seed = storage_columns(dataset, columns), transform, seed
        self.augment_on = augment_on
        self.reading_log = ReadingLog()
        if augment_on == "workers":
            opencv_hsv_matches()  # checked once here; forked workers inherit the verdict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> TrainingExample:
        epoch, index = (int(part) for part in key)
        example = self.dataset[index]
        transform = self.transform
        columns = (transform.image_column, transform.label_column)
        self.reading_log.record(" + ".join(example_files(example, index, *columns)))
        with single_threaded():  # per-example work is small: one thread is faster
            image, labels, source = read_training_example(example, index, *columns, transform.processor)
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
            plan, labels = transform.plan_example(labels, generator)  # every draw; the (h, w) label crop
            if self.augment_on == "workers":
                image, plan = transform.apply_plan(image, plan), None  # (3, h, w) uint8
        return TrainingExample(image, labels, (epoch, index), source, plan)

    def prepare_batch(self, batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """A collated batch -> `{"pixel_values": float32 (B, 3, crop_h, crop_w), "labels": int64 (B, crop_h, crop_w)}`
        on `device` (default: the images'): augmented there first when the workers only decoded, then normalised and
        padded there. Each example's draws come from its own CPU generator (seeded by `(seed, epoch, index)`)."""
        pixel_values, labels = [], []
        for image, label, plan in zip(batch["images"], batch["label_maps"], batch["plans"]):
            if device is not None:
                image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
            if plan is not None:  # no device synchronisation: every decision was made in the worker
                image = self.transform.apply_plan(image, plan, TorchImageOps)
            example_pixels, example_labels = self.transform.finish(image, label)
            pixel_values.append(example_pixels)
            labels.append(example_labels)
        return {"pixel_values": torch.stack(pixel_values), "labels": torch.stack(labels)}


def collate_training_examples(examples: list[TrainingExample]) -> dict[str, list]:
    """[`TrainingExample`]s -> one batch of lists, `images`, `label_maps`, `keys`, `sources`, `plans` (images of
    different sizes cannot be stacked before they are cropped and padded: [`AugmentedTrainDataset.prepare_batch`])."""
    return {name: [getattr(example, field) for example in examples] for name, field in _BATCH_FIELDS.items()}


_BATCH_FIELDS = {"images": "image", "label_maps": "label", "keys": "key", "sources": "source", "plans": "plan"}


# ------------------------------------------------------------------------------------------------ trainer


class SemanticFPNTrainer(Trainer):
    """`Trainer` with mmseg's optimiser and an evaluation that is exact on any number of processes.

    - Optimiser: SGD with momentum and weight decay on every parameter (the default `Trainer` exempts biases and
      norm weights from weight decay; mmseg's sem_fpn recipe does not).
    - Training order: an [`AugmentedTrainDataset`] is shuffled by an [`EpochShuffleSampler`] (exact resumes), its
      batches collated as lists and turned into `pixel_values` / `labels` on the device by `training_step`
      (augmentation there too with `augment_on="device"`); a worker that dies is reported with the file it read.
    - Evaluation: `prediction_step` returns class ids at the labels' original resolution (made by
      `compute_metrics.preprocess_logits_for_metrics`, before any gather), padded with the labels (with -100) to the
      largest height and width among processes, so that the Trainer's gather accepts images of different sizes.
    - Before evaluating, every process takes the main process's BatchNorm statistics (its weights are the ones saved;
      DDP leaves each process with the statistics of its own last batch).
    """

    def __init__(self, model=None, args: TrainingArguments | None = None, *more, momentum: float = 0.9, **kwargs):
        own_preprocessing = getattr(kwargs.get("compute_metrics"), "preprocess_logits_for_metrics", None)
        if own_preprocessing is not None and kwargs.get("preprocess_logits_for_metrics") == own_preprocessing:
            kwargs["preprocess_logits_for_metrics"] = None  # `prediction_step` applies it, before the padding
        super().__init__(model, args, *more, **kwargs)
        if self.optimizer_cls_and_kwargs is None:  # `self.args` exists now, also when `Trainer` made the defaults
            sgd = {"lr": self.args.learning_rate, "momentum": momentum, "weight_decay": self.args.weight_decay}
            self.optimizer_cls_and_kwargs = (torch.optim.SGD, sgd)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Every parameter, biases and norms included: mmseg's sem_fpn recipe decays them all (no `paramwise_cfg`)."""
        return [name for name, _ in model.named_parameters()]

    def _save(self, output_dir: str | None = None, state_dict=None):
        """As `Trainer._save`, but the training arguments are kept as `training_args.json`, not as a pickle."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir)
            (folder / "training_args.bin").unlink(missing_ok=True)
            (folder / TRAINING_ARGS_JSON).write_text(self.args.to_json_string())

    def get_train_dataloader(self):
        """As `Trainer.get_train_dataloader`; an [`AugmentedTrainDataset`] is collated by
        [`collate_training_examples`] (whatever `data_collator` says: that one serves evaluation)."""
        if not isinstance(self.train_dataset, AugmentedTrainDataset):
            return super().get_train_dataloader()
        data_collator, self.data_collator = self.data_collator, collate_training_examples
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = data_collator

    def training_step(self, model, inputs, num_items_in_batch=None):
        """As `Trainer.training_step`, after turning a batch of [`AugmentedTrainDataset`] examples into
        `pixel_values` / `labels` on the model's device ([`AugmentedTrainDataset.prepare_batch`]: augmentation there
        when the workers only decoded, then normalisation and padding). Override it to change what a step does with
        its batch; call `super().training_step` with `pixel_values` and `labels`."""
        if "images" in inputs and isinstance(self.train_dataset, AugmentedTrainDataset):
            inputs = self.train_dataset.prepare_batch(inputs, self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def train(self, *args, **kwargs):
        """As `Trainer.train`; a DataLoader worker that dies is reported as a [`TrainingDataError`] naming the file it
        was reading (torch only says that a worker exited)."""
        try:
            return super().train(*args, **kwargs)
        except RuntimeError as error:
            log = getattr(self.train_dataset, "reading_log", None)
            worker_died = not isinstance(error, TrainingDataError) and log is not None
            described = log.describe_worker_failure(error) if worker_died else None
            if described is None:
                raise
        # Raised outside the `except` block, without the torch error as its context: its traceback held the
        # DataLoader iterator, whose end shuts the other workers down and unregisters them from torch's SIGCHLD
        # handler (which would otherwise raise again, at a random moment, when any child process exits).
        raise TrainingDataError(described)

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(train_dataset, AugmentedTrainDataset):
            return EpochShuffleSampler(len(train_dataset), train_dataset.seed)
        return super()._get_train_sampler(train_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        to_class_ids = getattr(self.compute_metrics, "preprocess_logits_for_metrics", None)
        if logits is None or labels is None or to_class_ids is None or self.preprocess_logits_for_metrics is not None:
            return loss, logits, labels
        predictions = to_class_ids(logits, labels)  # (B, H, W) class ids at the labels' size
        for dim in (1, 2):  # same (H, W) on every process; padded pixels are ignored through the labels
            predictions = self.accelerator.pad_across_processes(predictions, dim=dim, pad_index=0)
            labels = self.accelerator.pad_across_processes(labels, dim=dim, pad_index=TRAINER_PADDING_INDEX)
        return loss, predictions, labels

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        self._use_main_process_buffers()
        return super().evaluate(*args, **kwargs)

    def _use_main_process_buffers(self) -> None:
        """Copy the main process's buffers (BatchNorm running statistics) to every process (DDP only)."""
        if self.args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return
        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)


__all__ = [
    "AUGMENT_ON",
    "TRAINING_ARGS_JSON",
    "AugmentedTrainDataset",
    "EpochShuffleSampler",
    "SemanticFPNTrainer",
    "TrainingExample",
    "collate_training_examples",
]
