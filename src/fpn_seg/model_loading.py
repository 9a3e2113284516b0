"""Loading and saving policy of the Semantic FPN model: strict `from_pretrained`, atomic `save_pretrained`, and the
one-line error messages for weights that do not fit the config.

transformers 5.25's own `from_pretrained` loads a checkpoint that lacks weights of the model, or holds others, with a
warning table (`LOAD REPORT`) over randomly initialised layers, and refuses weights of another shape with a
`RuntimeError` pointing at that table; it writes `save_pretrained` file by file in place. [`StrictLoadingMixin`]
keeps transformers' loading (its report stays available through `strict=False` or `output_loading_info=True`) and
turns those cases into errors that name the keys, the shapes and the fix.

Hub code: `save_pretrained` copies it next to a model (the model file imports it), so it imports only the standard
library, transformers and sibling hub files.
"""

import os
import pickle
import re

from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from .atomic import WEIGHT_FILE_NAME, save_folder_atomically, split_push_options


class StrictLoadingMixin:
    """Put before `PreTrainedModel` in the bases of a model class: its `from_pretrained` refuses weights that do not
    fit the config, and its `save_pretrained` is atomic. `classifier_prefix` names the module whose weights depend on
    the number of classes (the mismatch message then says how to start a new classifier)."""

    classifier_prefix = "classifier"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """As `PreTrainedModel.from_pretrained`, but a checkpoint that does not fit the config is an error, not a
        warning over randomly initialised layers.

        strict (`bool`, defaults to `True`):
            Refuse weights files that lack keys of the model or hold keys it does not have (a `config.json` and
            weights of different networks, e.g. another backbone depth). `strict=False` loads them as transformers
            does: missing weights randomly initialised, extra ones dropped, with its load report. Not applied when
            the weights come as `state_dict` with no folder (`from_pretrained(None, config=..., state_dict=...)`)
            or when `output_loading_info=True` asks for that report.

        Weights of another shape (e.g. a classifier for another number of classes) are refused unless
        `ignore_mismatched_sizes=True`, which re-initialises them (to fine-tune a new classifier).
        """
        ignore_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        output_loading_info = kwargs.pop("output_loading_info", False)
        source = f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r})"
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                ignore_mismatched_sizes=True,  # checked below, with the keys and shapes named
                output_loading_info=True,
                **kwargs,
            )
        except pickle.UnpicklingError as error:  # a pickled weights file (.bin) that weights_only=True refuses
            raise pickle.UnpicklingError(unpickling_message(source, error)) from None
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' class, named: hub code imports no safetensors
                raise
            raise OSError(
                f"{source}: the weights file ({SAFE_WEIGHTS_NAME}) is truncated or corrupt ({error}); was the save "
                "interrupted? Save the model again (save_pretrained writes the folder atomically)."
            ) from None
        if not ignore_mismatched_sizes and loading_info["mismatched_keys"]:
            raise ValueError(
                mismatched_keys_message(source, loading_info["mismatched_keys"], model.config, cls.classifier_prefix)
            )
        # A plain load from a folder or hub id is strict; a given state_dict (`from_pretrained(None, config=...,
        # state_dict=...)`) and a load that asks for its report (`output_loading_info=True`) get transformers' report.
        strict = strict and pretrained_model_name_or_path is not None and not output_loading_info
        if strict and (loading_info["missing_keys"] or loading_info["unexpected_keys"]):
            missing, unexpected = loading_info["missing_keys"], loading_info["unexpected_keys"]
            raise ValueError(missing_keys_message(source, missing, unexpected))
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """As `PreTrainedModel.save_pretrained`, but atomic: the files are written to a hidden sibling folder and moved
        in with `config.json` last, so a crash leaves the previous save (or a folder without `config.json`, which does
        not load), never a mix of two saves that loads; other files in the folder are kept (see
        `save_folder_atomically`). With `push_to_hub=True` the saved model is then uploaded with `push_to_hub`
        (`repo_id` defaults to the folder name; `commit_message`, `private`, `token`, `create_pr`... are passed on).
        """
        if not is_main_process or kwargs.get("distributed_checkpoint"):  # every process writes: no staging folder
            return super().save_pretrained(save_directory, is_main_process, state_dict, push_to_hub, **kwargs)
        kwargs, hub_options = split_push_options(kwargs, save_directory)
        save_folder = super().save_pretrained
        save_folder_atomically(
            lambda folder: save_folder(folder, state_dict=state_dict, **kwargs),
            save_directory,
            commit_file=CONFIG_NAME,
            retire=WEIGHT_FILE_NAME,
        )
        if push_to_hub:
            self.push_to_hub(**hub_options, max_shard_size=kwargs.get("max_shard_size", "50GB"))


def shown_keys(keys) -> str:
    """The first six of `keys` (sorted), and how many more."""
    keys = sorted(keys)
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def mismatched_keys_message(source: str, mismatched_keys, config, classifier_prefix: str = "classifier") -> str:
    """Name the weights whose shapes differ; for the classifier alone, the two class counts and the fix."""
    shapes = {key: (tuple(saved), tuple(model)) for key, saved, model in mismatched_keys}
    listed = "; ".join(
        f"{key}: {saved} in the checkpoint, {model} in the model" for key, (saved, model) in sorted(shapes.items())[:4]
    )
    classifier = shapes.get(f"{classifier_prefix}.weight")
    if classifier is not None and set(shapes) <= {f"{classifier_prefix}.weight", f"{classifier_prefix}.bias"}:
        return (
            f"{source}: the checkpoint's classifier has {classifier[0][0]} classes but the config asks for "
            f"{config.num_labels} (num_labels / id2label) ({listed}). Drop num_labels / id2label to load the saved "
            "classes, or pass ignore_mismatched_sizes=True to start a new classifier for the new classes (size "
            "mismatch; then fine-tune it)."
        )
    return (
        f"{source}: {len(shapes)} weights have another shape (size mismatch) than the config gives them: {listed}. "
        "The config and the weights describe different networks; pass ignore_mismatched_sizes=True to re-initialise "
        "those weights."
    )


def unpickling_message(source: str, error: Exception) -> str:
    """Why a pickled weights file was refused (torch's first sentence) and how to convert it."""
    found = re.search(r"(Unsupported global|unsupported GLOBAL|WeightsUnpickler error):? .*", str(error))
    reason = (found.group(0) if found else str(error)[:300]).split(". ")[0].rstrip(".")  # torch's first sentence
    return (
        f"{source}: refused. The pickled weights file (pytorch_model.bin) cannot be read with "
        f"torch.load(weights_only=True): {reason}. Loading it with weights_only=False could run code from the file, "
        "which this model never does. Re-save the weights as safetensors (model.save_pretrained writes "
        f"{SAFE_WEIGHTS_NAME}) in an environment that trusts the file."
    )


def missing_keys_message(source: str, missing_keys, unexpected_keys) -> str:
    """Name the weights the checkpoint lacks and those it holds in excess, and the way to load it anyway."""
    parts = []
    if missing_keys:
        parts.append(f"the checkpoint lacks {len(missing_keys)} weights of the model ({shown_keys(missing_keys)})")
    if unexpected_keys:
        shown = shown_keys(unexpected_keys)
        parts.append(f"the checkpoint holds {len(unexpected_keys)} weights the model does not have ({shown})")
    return (
        f"{source}: {' and '.join(parts)}. The config.json and the weights do not describe the same network (e.g. "
        "another backbone depth or width, or weights of another model); loading would leave layers randomly "
        "initialised. Pass strict=False to load it anyway (as transformers does, with its load report)."
    )


__all__ = ["StrictLoadingMixin", "mismatched_keys_message", "missing_keys_message", "shown_keys", "unpickling_message"]
