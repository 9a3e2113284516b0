"""The training library: [`SemanticFPNTrainer`] (mmseg's optimiser, exact multi-process evaluation) and the
deterministic training order and augmentation ([`EpochShuffleSampler`], [`AugmentedTrainDataset`]) that make
resumed runs equal uninterrupted ones. The `fpn-seg train` script (`fpn_seg.train`) sits on top.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from .data import TrainTransform, check_label_policy
from .data.transforms import mix_seed, single_threaded
from .image_processing_semantic_fpn import image_to_tensor, label_to_tensor
from .metrics.trainer import TRAINER_PADDING_INDEX

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
    """

    def __init__(self, dataset: Dataset, transform: TrainTransform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        example = self.dataset[int(index)]
        image, label = example[self.transform.image_column], example[self.transform.label_column]
        check_label_policy(label, self.transform.processor)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        with single_threaded():  # per-example tensors are small: one thread is faster
            pixel_values, labels = self.transform.transform_example(
                image_to_tensor(image), label_to_tensor(label), generator
            )  # (3, crop_h, crop_w) float32, (crop_h, crop_w) int64
        return {"pixel_values": pixel_values, "labels": labels}


# ------------------------------------------------------------------------------------------------ trainer


class SemanticFPNTrainer(Trainer):
    """`Trainer` with mmseg's optimiser and an evaluation that is exact on any number of processes.

    - Optimiser: SGD with momentum and weight decay on every parameter (the default `Trainer` exempts biases and
      norm weights from weight decay; mmseg's sem_fpn recipe does not).
    - Training order: an [`AugmentedTrainDataset`] is shuffled by an [`EpochShuffleSampler`] (exact resumes).
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


__all__ = ["TRAINING_ARGS_JSON", "AugmentedTrainDataset", "EpochShuffleSampler", "SemanticFPNTrainer"]
