"""Mean IoU: equality with an independent NumPy computation of evaluate's definition, the offline `evaluate` module,
the Trainer's batch `compute_metrics`, memory that does not grow with the data, and all-reduce across processes."""

import gc
import json
import math
import os
import subprocess
import sys
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import EvalPrediction, Trainer, TrainingArguments

from fpn_seg import SemanticFPNForSemanticSegmentation
from fpn_seg.metrics import (
    EVALUATE_MODULE_PATH,
    MeanIoU,
    format_iou_table,
    make_compute_metrics,
    mean_iou,
)

RESULT_KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


def reference_mean_iou(predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None,
                       reduce_labels=False):  # fmt: skip
    """evaluate's `mean_iou`, written from its definition with one boolean mask per class (no confusion matrix)."""
    intersection, pred_area, label_area = (np.zeros(num_labels) for _ in range(3))
    for prediction, reference in zip(predictions, references):
        prediction = np.array(prediction, dtype=np.int64)
        reference = np.array(reference, dtype=np.int64)
        if label_map is not None:
            original = reference.copy()
            for old_id, new_id in label_map.items():
                reference[original == old_id] = new_id
        if reduce_labels:  # literally evaluate's three steps
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        counted = reference != ignore_index
        for index in range(num_labels):
            predicted_here = (prediction == index) & counted
            labelled_here = (reference == index) & counted
            intersection[index] += np.sum(predicted_here & labelled_here)
            pred_area[index] += np.sum(predicted_here)
            label_area[index] += np.sum(labelled_here)
    union = pred_area + label_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersection / union
        accuracy = intersection / label_area
        overall = intersection.sum() / label_area.sum()
    with warnings.catch_warnings():  # all-NaN means
        warnings.simplefilter("ignore", RuntimeWarning)
        results = {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(accuracy), "overall_accuracy": overall,
                   "per_category_iou": iou, "per_category_accuracy": accuracy}  # fmt: skip
    if nan_to_num is not None:
        results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
    return results


def assert_same_results(actual, expected):
    assert set(actual) == set(RESULT_KEYS)
    for key in RESULT_KEYS:
        # Same values to 1e-6 and NaNs at the same places (assert_allclose fails on a NaN against a number).
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6, equal_nan=True, err_msg=key)
        assert np.shape(actual[key]) == np.shape(expected[key]), key


def random_case(rng: np.random.Generator, index: int) -> dict:
    """Maps of random sizes with ignore pixels, absent classes, out-of-range values, and a random label policy."""
    num_labels = int(rng.choice([1, 2, 3, 7, 19, 150]))
    reduce_labels = bool(rng.random() < 0.3)
    ignore_index = int(rng.choice([255, 255, 255, 0, -1, num_labels + 1]))
    label_map = None
    if rng.random() < 0.2:
        old_ids, new_ids = rng.integers(0, num_labels + 3, 4), rng.integers(0, num_labels, 4)
        label_map = {int(old_id): int(new_id) for old_id, new_id in zip(old_ids, new_ids)}
    present = rng.choice(num_labels, size=max(1, num_labels // 2), replace=False)  # about half the classes absent
    dtype = rng.choice([np.uint8, np.int32, np.int64]) if num_labels < 200 else np.int64
    predictions, references = [], []
    for _ in range(int(rng.integers(1, 5))):
        shape = tuple(int(s) for s in rng.integers(1, 24, size=2))
        reference = rng.choice(present, size=shape) + (1 if reduce_labels else 0)
        special = rng.random(shape)
        reference[special < 0.15] = 255  # ignored (or reduced "other")
        if reduce_labels:
            reference[(special >= 0.15) & (special < 0.25)] = 0
        if dtype != np.uint8:
            reference[(special >= 0.25) & (special < 0.28)] = num_labels + 5  # out of range, not ignored
        prediction = rng.integers(0, num_labels, size=shape)
        swap = rng.random(shape) < 0.5
        prediction[swap] = np.clip(reference[swap] - (1 if reduce_labels else 0), 0, num_labels - 1)
        wild = rng.random(shape)
        prediction[wild < 0.05] = num_labels + int(rng.integers(0, 3))  # out-of-range predictions
        prediction[wild > 0.97] = 255
        if dtype != np.uint8:
            prediction[(wild > 0.05) & (wild < 0.07)] = -3
        predictions.append(prediction.astype(dtype))
        references.append(reference.astype(dtype))
    kwargs = {"num_labels": num_labels, "ignore_index": ignore_index, "reduce_labels": reduce_labels,
              "label_map": label_map, "nan_to_num": 0.0 if index % 7 == 0 else None}  # fmt: skip
    return {"predictions": predictions, "references": references, "kwargs": kwargs}


CASES = [random_case(np.random.default_rng(seed), seed) for seed in range(60)]


@pytest.mark.parametrize("case_index", range(len(CASES)))
def test_function_matches_numpy_definition(case_index):
    case = CASES[case_index]
    expected = reference_mean_iou(case["predictions"], case["references"], **case["kwargs"])
    assert_same_results(mean_iou(case["predictions"], case["references"], **case["kwargs"]), expected)


def test_streaming_equals_one_shot_across_input_kinds():
    rng = np.random.default_rng(1)
    for case in CASES[:30]:
        kwargs = dict(case["kwargs"])
        nan_to_num = kwargs.pop("nan_to_num")
        metric = MeanIoU(**kwargs)
        for step, (prediction, reference) in enumerate(zip(case["predictions"], case["references"])):
            if step % 2:  # torch tensors, as a (1, H, W) batch
                metric.update(torch.from_numpy(prediction)[None], torch.from_numpy(reference)[None])
            else:  # NumPy arrays in a one-element list
                metric.update([prediction], [reference])
        expected = reference_mean_iou(case["predictions"], case["references"], **case["kwargs"])
        assert_same_results(metric.compute(nan_to_num=nan_to_num), expected)
        # Counting the same data again doubles every count and leaves the ratios unchanged; reset empties it.
        metric.update(case["predictions"], case["references"])
        assert_same_results(metric.compute(nan_to_num=nan_to_num), expected)
        metric.reset()
        assert int(metric.full_confusion_matrix.sum()) == 0
    # A (B, H, W) batch in one call equals its maps one at a time.
    predictions = rng.integers(0, 5, size=(4, 9, 11))
    references = rng.integers(0, 6, size=(4, 9, 11))
    one_call = mean_iou(predictions, references, 5, 255)
    assert_same_results(one_call, mean_iou(list(predictions), list(references), 5, 255))


def test_confusion_matrix_layout_and_out_of_range_bins():
    metric = MeanIoU(num_labels=3, ignore_index=255)
    prediction = torch.tensor([[0, 1, 2, 7], [2, 2, -1, 0]])
    reference = torch.tensor([[0, 1, 1, 1], [255, 9, 2, 2]])
    metric.update(prediction, reference)
    # rows: reference, columns: prediction; (1, 7) and (2, -1) go to the out-of-range column, (9, 2) to the row.
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1], [0, 0, 1, 0]])
    assert torch.equal(metric.full_confusion_matrix, expected)
    assert torch.equal(metric.confusion_matrix, expected[:3, :3])
    results = metric.compute()
    # class 1: I=1, P=1, L=3 (one of them predicted out of range) -> 1/3; class 2: I=0, predicted at references
    # 1 and 9 (out of range, still counted) -> P=2, L=2 -> 0.
    np.testing.assert_array_equal(results["per_category_iou"], [1 / 2, 1 / 3, 0.0])
    np.testing.assert_array_equal(results["per_category_accuracy"], [1.0, 1 / 3, 0.0])
    assert results["overall_accuracy"] == 2 / 6


def test_wide_value_ranges_and_other_dtypes():
    rng = np.random.default_rng(5)
    predictions = rng.integers(0, 6, size=(3, 10, 12))
    references = rng.integers(0, 7, size=(3, 10, 12))
    references[0, 0, :3] = [255, 10**6, -(10**6)]  # a value range too wide for the lookup table
    predictions[1, 0, :2] = [10**7, -5]
    for reduce_labels in (False, True):
        expected = reference_mean_iou(predictions, references, 6, 255, reduce_labels=reduce_labels)
        assert_same_results(mean_iou(predictions, references, 6, 255, reduce_labels=reduce_labels), expected)
    small = rng.integers(-2, 7, size=(2, 5, 5))
    expected = reference_mean_iou(small, small[::-1], 6, -1, label_map={3: 0, 0: 3})
    for dtype in (torch.int8, torch.int16, torch.int32, torch.float32):
        as_dtype = torch.from_numpy(small).to(dtype)
        assert_same_results(mean_iou(as_dtype, as_dtype.flip(0), 6, -1, label_map={3: 0, 0: 3}), expected)
    # More pixels than one counting chunk (2**20), as uint8 arrays and as int64 tensors.
    large_prediction = rng.integers(0, 6, size=(1030, 1030), dtype=np.uint8)
    large_reference = large_prediction ^ (rng.random((1030, 1030)) < 0.3)  # 30% wrong
    large_reference[rng.random((1030, 1030)) < 0.1] = 255
    expected = reference_mean_iou([large_prediction], [large_reference], 5, 255)
    assert_same_results(mean_iou(large_prediction, large_reference, 5, 255), expected)
    as_tensors = torch.from_numpy(large_prediction).long(), torch.from_numpy(large_reference).long()
    assert_same_results(mean_iou(*as_tensors, 5, 255), expected)
    mask = rng.random((2, 4, 4)) < 0.5
    assert_same_results(mean_iou(mask, mask[::-1], 2, 255), reference_mean_iou(mask, mask[::-1], 2, 255))


def test_absent_classes_are_nan_and_nan_to_num():
    results = mean_iou([np.array([[0, 0]])], [np.array([[0, 255]])], num_labels=3, ignore_index=255)
    assert results["mean_iou"] == 1.0 and np.isnan(results["per_category_iou"][1:]).all()
    nothing_counted = mean_iou([np.array([[1]])], [np.array([[255]])], num_labels=2, ignore_index=255)
    assert all(np.isnan(nothing_counted[key]).all() for key in RESULT_KEYS)
    filled = mean_iou([np.array([[1]])], [np.array([[255]])], num_labels=2, ignore_index=255, nan_to_num=-1)
    assert filled["mean_iou"] == -1 and filled["per_category_iou"].tolist() == [-1, -1]


def test_clear_errors_on_bad_input():
    metric = MeanIoU(num_labels=4)
    with pytest.raises(ValueError, match=r"predictions has shape \(2, 3\) but references has shape \(3, 2\)"):
        metric.update(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="argmax"):
        metric.update(torch.zeros(1, 4, 2, 2, dtype=torch.long), torch.zeros(1, 4, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"predictions\[0\].*non-integral"):
        metric.update([np.full((2, 2), 0.5)], [np.zeros((2, 2), dtype=int)])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric.update([np.zeros((2, 2), dtype=int)] * 2, [np.zeros((2, 2), dtype=int)])
    with pytest.raises(ValueError, match="num_labels"):
        MeanIoU(num_labels=0)


def test_memory_does_not_grow_with_the_number_of_images():
    metric = MeanIoU(num_labels=150)
    rng = np.random.default_rng(0)

    def feed(count: int) -> None:
        for _ in range(count):
            metric.update(rng.integers(0, 150, size=(64, 64)), rng.integers(0, 150, size=(64, 64)))

    tracemalloc.start()
    try:
        feed(5)
        after_few = tracemalloc.get_traced_memory()[0]
        feed(100)  # 100 maps of 32 KiB each: retaining them would add about 6 MiB
        after_many = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_many - after_few < 64 * 1024
    # The only state is the (C + 1)^2 matrix; inputs are not referenced after `update`.
    tensors = [value for value in vars(metric).values() if isinstance(value, (torch.Tensor, np.ndarray))]
    assert [tuple(t.shape) for t in tensors] == [(151 * 151,)]
    prediction, reference = rng.integers(0, 150, size=(8, 8)), rng.integers(0, 150, size=(8, 8))
    alive = [weakref.ref(prediction), weakref.ref(reference)]
    metric.update(torch.from_numpy(prediction), torch.from_numpy(reference))
    del prediction, reference
    gc.collect()
    assert all(ref() is None for ref in alive)


def test_compute_metrics_over_batches_equals_one_shot():
    num_labels, rng = 5, np.random.default_rng(3)
    names = ["road", "traffic light", "sky", "sky", "car"]  # a duplicate name gets its own key
    compute_metrics = make_compute_metrics(num_labels, id2label=dict(enumerate(names)))
    all_predictions, all_labels = [], []
    tracemalloc.start()
    for step in range(6):
        logits = torch.from_numpy(rng.normal(size=(2, num_labels, 6, 8))).float()  # input resolution
        logits[:, 4] -= 100.0  # class 4: never predicted, never labelled
        labels = torch.from_numpy(rng.integers(0, num_labels - 1, size=(2, 9, 12)))  # label resolution; class 4 absent
        labels[:, :2] = 255
        labels[:, -1] = -100  # the Trainer's cross-process padding
        upsampled = torch.nn.functional.interpolate(logits, size=(9, 12), mode="bilinear", align_corners=False)
        all_predictions += list(upsampled.argmax(1).numpy())
        all_labels += list(labels.masked_fill(labels == -100, 255).numpy())
        output = compute_metrics(EvalPrediction(predictions=(logits,), label_ids=labels), compute_result=step == 5)
        assert output == {} or step == 5
        if step == 1:
            after_two_batches = tracemalloc.get_traced_memory()[0]
    grown = tracemalloc.get_traced_memory()[0] - after_two_batches
    tracemalloc.stop()
    assert grown < 64 * 1024
    expected = reference_mean_iou(all_predictions, all_labels, num_labels, 255)
    assert_same_results(compute_metrics.last_results, expected)
    assert set(output) == {"mean_iou", "mean_accuracy", "overall_accuracy", "iou_road", "iou_traffic_light",
                           "iou_sky", "iou_sky_2"}  # fmt: skip  (class 4 has no IoU: left out)
    assert output["iou_traffic_light"] == pytest.approx(expected["per_category_iou"][1], abs=1e-12)
    assert output["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    json.dumps(output, allow_nan=False)
    # Reset after compute_result: a second evaluation starts from zero; nan_to_num keeps every key.
    compute_metrics = make_compute_metrics(num_labels, nan_to_num=0.0)
    output = compute_metrics(EvalPrediction(predictions=torch.zeros(1, 5, 2, 2), label_ids=torch.zeros(1, 2, 2)))
    assert output["iou_class_4"] == 0.0 and output["mean_iou"] == 1.0  # NaNs skipped by the mean, then filled
    # The preprocess hook gives class ids at the label size, which compute_metrics then counts as they are.
    hook = make_compute_metrics(num_labels)
    logits = torch.randn(2, num_labels, 6, 8)
    class_ids = hook.preprocess_logits_for_metrics(logits, torch.zeros(2, 9, 12))
    assert class_ids.dtype == torch.uint8 and class_ids.shape == (2, 9, 12)
    assert torch.equal(class_ids.long(), hook.predict_classes(logits, (9, 12)))
    # Labels the Trainer padded across processes (bottom rows of -100): logits resized to the real 9 rows only.
    labels = torch.randint(0, num_labels, (2, 9, 12))
    padded = torch.cat([labels, torch.full((2, 4, 12), -100)], dim=1)
    class_ids = hook.preprocess_logits_for_metrics(logits, padded)
    assert class_ids.shape == (2, 13, 12)
    assert torch.equal(class_ids[:, :9].long(), hook.predict_classes(logits, (9, 12)))
    unpadded = make_compute_metrics(num_labels)(EvalPrediction(predictions=class_ids[:, :9], label_ids=labels))
    assert make_compute_metrics(num_labels)(EvalPrediction(predictions=class_ids, label_ids=padded)) == unpadded
    # `Trainer.predict` without labels: class ids at the logits' size.
    assert torch.equal(hook.preprocess_logits_for_metrics(logits, None).long(), logits.argmax(1))


def test_trainer_batch_eval_metrics(tmp_path):
    from datasets import Dataset

    config = tiny_config(num_labels=3)
    model = SemanticFPNForSemanticSegmentation(config).eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(5, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 3, (5, 40, 48), generator=generator)  # another resolution than the input
    labels[:, :4] = 255
    dataset = Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels.numpy()}).with_format("torch")
    compute_metrics = make_compute_metrics(config)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, batch_eval_metrics=True,
                             report_to=[], use_cpu=True)  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=dataset, compute_metrics=compute_metrics,
                      preprocess_logits_for_metrics=compute_metrics.preprocess_logits_for_metrics)  # fmt: skip
    metrics = trainer.evaluate()
    with torch.no_grad():
        logits = model(pixel_values).logits
    upsampled = torch.nn.functional.interpolate(logits, size=(40, 48), mode="bilinear", align_corners=False)
    predictions = upsampled.argmax(1)
    expected = reference_mean_iou(list(predictions.numpy()), list(labels.numpy()), 3, 255)
    assert metrics["eval_mean_iou"] == pytest.approx(float(expected["mean_iou"]), abs=1e-9)
    for index in range(3):
        value = metrics.get(f"eval_iou_class_{index}", math.nan)
        np.testing.assert_allclose(value, expected["per_category_iou"][index], atol=1e-9, equal_nan=True)
    table = format_iou_table(compute_metrics.last_results, config.id2label)
    assert "class_2" in table and f"{100 * expected['mean_iou']:.2f}" in table
    # The same table from the Trainer's flat metrics (no per-class accuracy there).
    flat_table = format_iou_table(metrics, config.id2label, prefix="eval_")
    for full_line, flat_line in zip(table.splitlines(), flat_table.splitlines()):
        if full_line.startswith("| class_"):
            assert full_line.split("|")[:3] == flat_line.split("|")[:3]
    assert table.splitlines()[-3] == flat_table.splitlines()[-3]  # means


def test_format_iou_table():
    results = mean_iou([np.array([[0, 1, 1]])], [np.array([[0, 1, 0]])], num_labels=3, ignore_index=255)
    table = format_iou_table(results, {0: "road", 1: "traffic light", 2: "sky"})
    lines = table.splitlines()
    assert lines[1] == "| Class            |   IoU |    Acc |"
    assert "| road             | 50.00 |  50.00 |" in lines
    assert "| sky              |   nan |    nan |" in lines
    assert "| mean             | 50.00 |  75.00 |" in lines
    assert "| overall accuracy |       |  66.67 |" in lines
    flat = {"test_mean_iou": 0.5, "test_mean_accuracy": 0.75, "test_overall_accuracy": 2 / 3,
            "test_iou_road": 0.5, "test_iou_traffic_light": 0.5}  # fmt: skip
    flat_lines = format_iou_table(flat, ["road", "traffic light", "sky"], prefix="test_").splitlines()
    assert "| traffic light    | 50.00 |       |" in flat_lines
    assert "| sky              |   nan |       |" in flat_lines

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.split("|")]

    assert [cells(line) for line in flat_lines[-3:-1]] == [cells(line) for line in lines[-3:-1]]  # means
    with pytest.raises(ValueError, match="id2label"):
        format_iou_table(flat)


_EVALUATE_SCRIPT = """
import sys, numpy as np, evaluate, fpn_seg.metrics
metric = evaluate.load(fpn_seg.metrics.EVALUATE_MODULE_PATH)
cases = np.load(sys.argv[1], allow_pickle=True)["cases"]
results = [metric.compute(predictions=c["predictions"], references=c["references"], **c["kwargs"]) for c in cases]
np.save(sys.argv[2], np.array(results, dtype=object), allow_pickle=True)
"""


def test_evaluate_module_loads_offline_and_matches(tmp_path):
    cases = [case for case in CASES[:12] if all(p.dtype != np.int64 for p in case["predictions"])][:6]
    cases.append(CASES[0] | {"predictions": [p.astype(np.int64) for p in CASES[0]["predictions"]]})
    np.savez(tmp_path / "cases.npz", cases=np.array(cases, dtype=object))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               HF_EVALUATE_OFFLINE="1", PYTHONWARNINGS="ignore")  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", _EVALUATE_SCRIPT, str(tmp_path / "cases.npz"),
                                str(tmp_path / "results.npy")], env=env, capture_output=True, text=True)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    # The module was copied into the fresh modules cache and ran from there.
    assert list((tmp_path / "modules").rglob("mean_iou_metric.py"))
    results = np.load(tmp_path / "results.npy", allow_pickle=True)
    for case, result in zip(cases, results):
        assert_same_results(result, reference_mean_iou(case["predictions"], case["references"], **case["kwargs"]))
    assert os.path.isfile(os.path.join(EVALUATE_MODULE_PATH, "mean_iou_metric.py"))


# Each worker loads only the metric's source files and the label policy beside them (they need torch and NumPy) as
# bare packages, not the transformers-heavy fpn_seg, so that the two processes start in a couple of seconds.
_ALL_REDUCE_WORKER = """
import importlib, os, sys, types
import numpy as np, torch.distributed as dist
rank, world_size, init_file, metrics_folder, output_dir = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
for name, folder in (("package_under_test", os.path.dirname(metrics_folder)), ("package_under_test.metrics", metrics_folder)):
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [folder]
module = types.SimpleNamespace(MeanIoU=importlib.import_module("package_under_test.metrics.mean_iou").MeanIoU,
                               MeanIoUComputeMetrics=importlib.import_module("package_under_test.metrics.trainer").MeanIoUComputeMetrics)
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
rng = np.random.default_rng(rank)
metric = module.MeanIoU(num_labels=4)
metric.update(list(rng.integers(0, 5, size=(3, 7, 6))), list(rng.integers(0, 4, size=(3, 7, 6))))
np.save(os.path.join(output_dir, f"local_{rank}.npy"), metric.full_confusion_matrix.numpy())
metric.all_reduce()
np.save(os.path.join(output_dir, f"reduced_{rank}.npy"), metric.full_confusion_matrix.numpy())
# compute_metrics fed only this process's shard (inputs_gathered=False) sums the shards at compute_result.
compute_metrics = module.MeanIoUComputeMetrics(4, inputs_gathered=False)
shard = types.SimpleNamespace(predictions=rng.integers(0, 4, (2, 5, 5)), label_ids=rng.integers(0, 4, (2, 5, 5)))
compute_metrics(shard, compute_result=True)
np.save(os.path.join(output_dir, f"shard_{rank}.npy"), np.stack([shard.predictions, shard.label_ids]))
np.save(os.path.join(output_dir, f"shard_iou_{rank}.npy"), compute_metrics.last_results["per_category_iou"])
dist.destroy_process_group()
"""


def test_all_reduce_sums_across_two_gloo_processes(tmp_path):
    metrics_folder = os.path.dirname(sys.modules[MeanIoU.__module__].__file__)
    workers = [
        subprocess.Popen([sys.executable, "-c", _ALL_REDUCE_WORKER, str(rank), "2", str(tmp_path / "rendezvous"),
                          metrics_folder, str(tmp_path)], stderr=subprocess.PIPE, text=True)  # fmt: skip
        for rank in range(2)
    ]
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), errors
    local = [np.load(tmp_path / f"local_{rank}.npy") for rank in range(2)]
    assert local[0].sum() > 0 and not np.array_equal(local[0], local[1])
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"reduced_{rank}.npy"), local[0] + local[1])
    shards = [np.load(tmp_path / f"shard_{rank}.npy") for rank in range(2)]
    expected = reference_mean_iou([*shards[0][0], *shards[1][0]], [*shards[0][1], *shards[1][1]], 4, 255)
    for rank in range(2):
        shard_iou = np.load(tmp_path / f"shard_iou_{rank}.npy")
        np.testing.assert_allclose(shard_iou, expected["per_category_iou"], atol=1e-12)
    # Without torch.distributed, all_reduce leaves the counts alone.
    metric = MeanIoU(num_labels=2).update(np.array([[0, 1]]), np.array([[0, 0]]))
    assert torch.equal(metric.all_reduce().full_confusion_matrix, metric.full_confusion_matrix)
