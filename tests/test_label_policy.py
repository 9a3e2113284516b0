"""The one label-policy object: made from a config or a processor, its two named semantics, its description and
its JSON form (the mark on label PNGs)."""

import pytest
import torch

from fpn_seg import LabelPolicy, SemanticFPNConfig, SemanticFPNImageProcessor
from fpn_seg.data import ADE20K_RAW_POLICY, CITYSCAPES_TRAIN_ID_POLICY
from fpn_seg.metrics import MeanIoU


def _config(**kwargs) -> SemanticFPNConfig:
    return SemanticFPNConfig(num_labels=3, **kwargs)


def test_config_and_processor_share_one_policy():
    config = _config(reduce_labels=True, label_map={7: 0, 8: 1}, ignore_index=200)
    policy = config.label_policy
    assert policy == LabelPolicy(reduce_labels=True, label_map={7: 0, 8: 1}, ignore_index=200)
    processor = SemanticFPNImageProcessor.from_model_config(config)
    assert processor.label_policy == policy
    assert SemanticFPNImageProcessor(**policy.processor_options()).label_policy == policy
    # A config saved and reloaded (JSON turns the label_map keys into strings) keeps its policy.
    assert SemanticFPNConfig.from_dict(config.to_dict()).label_policy == policy


def test_the_two_semantics_differ_where_they_should():
    raw = torch.tensor([0, 1, 7, 9, 255])
    policy = LabelPolicy(reduce_labels=True, label_map={7: 3}, ignore_index=100)
    # Ours: values the map does not name (0, 1, 9, 255) -> ignore_index, which survives the reduction; 7 -> 3 -> 2.
    assert policy.encode(raw).tolist() == [100, 100, 2, 100, 100]
    assert LabelPolicy(reduce_labels=True, ignore_index=100).encode(raw).tolist() == [100, 0, 6, 8, 254]
    # evaluate's: 9 and 255 are kept by the map; reduce_labels maps 0 and 255 to 255 whatever ignore_index is.
    assert policy.encode_as_evaluate(raw).tolist() == [255, 0, 2, 8, 255]
    assert LabelPolicy().encode(raw).tolist() == raw.tolist()


def test_encode_refuses_negative_values_under_a_label_map():
    with pytest.raises(ValueError, match="non-negative values; got a minimum of -1"):
        LabelPolicy(label_map={1: 0}).encode(torch.tensor([-1, 1]))


def test_metric_reads_references_with_evaluates_semantics():
    metric = MeanIoU(num_labels=3, reduce_labels=True, label_map={9: 1})
    assert metric.reference_policy == LabelPolicy(reduce_labels=True, label_map={9: 1}, ignore_index=255)
    # 0 -> ignored (255), 9 -> 1 -> 0 after the reduction, 3 -> 2; every counted pixel is predicted right.
    metric.update(torch.tensor([[0, 0, 2]]), torch.tensor([[0, 9, 3]]))
    assert metric.confusion_matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_description_differences_and_json():
    assert ADE20K_RAW_POLICY.describe() == "reduce_labels=True, no label_map, ignore_index=255"
    cityscapes_ids = LabelPolicy(label_map={7: 0, 8: 1}, description="Cityscapes label ids")
    assert cityscapes_ids.describe() == "reduce_labels=False, label_map with 2 entries, ignore_index=255"
    assert cityscapes_ids.differences(CITYSCAPES_TRAIN_ID_POLICY, "the labels need", "the processor has") == [
        "label_map: the labels need a label_map {7->0, 8->1}, the processor has no label_map"
    ]
    assert cityscapes_ids.differences(LabelPolicy(label_map={8: 1, 7: 0}), "a", "b") == []
    restored = LabelPolicy.from_json(cityscapes_ids.to_json())
    assert restored == cityscapes_ids and restored.description == "Cityscapes label ids"
    assert restored.label_map == {7: 0, 8: 1}
    # The description does not take part in equality.
    assert LabelPolicy(description="x") == LabelPolicy(description="y")
