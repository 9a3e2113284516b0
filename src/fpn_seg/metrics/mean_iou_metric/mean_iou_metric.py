"""An `evaluate` module with the interface and results of evaluate's `mean_iou`, computed by `fpn_seg`'s streaming
confusion matrix. Shipped inside the package so that it loads offline:

    import evaluate, fpn_seg.metrics
    metric = evaluate.load(fpn_seg.metrics.EVALUATE_MODULE_PATH)

`evaluate.load` copies this file into its modules cache and imports it from there, so it reaches the counting code
through the installed `fpn_seg` package rather than a relative import.
"""

import datasets
import evaluate

from fpn_seg.metrics.mean_iou import mean_iou

_DESCRIPTION = """
Mean Intersection-over-Union of semantic segmentation maps, as evaluate's `mean_iou` and mmsegmentation: per class,
over all maps, intersection / union of predicted and reference pixels (pixels whose reference is `ignore_index` are
skipped); `mean_iou` and `mean_accuracy` average the classes that have a value (NaN for classes absent from both).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted class-id maps (arrays, tensors or PIL images), each (height, width); sizes may
        differ between maps but each prediction matches its reference.
    references: list of reference class-id maps, same shapes as `predictions`.
    num_labels (`int`): number of classes; values outside 0..num_labels-1 are not class ids (a prediction outside
        counts as a miss).
    ignore_index (`int`): reference value that is not counted.
    nan_to_num (`float`, *optional*): replaces the NaNs of every result.
    label_map (`dict`, *optional*): original reference value -> new value, applied to references first.
    reduce_labels (`bool`, defaults to `False`): references 0 -> 255, v -> v - 1 (255 stays), as ADE20K.
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy (arrays of
    shape (num_labels,)).
"""

_CITATION = """
@inproceedings{kirillov2019panoptic,
  title={Panoptic Feature Pyramid Networks},
  author={Kirillov, Alexander and Girshick, Ross and He, Kaiming and Doll{\\'a}r, Piotr},
  booktitle={CVPR},
  year={2019}
}
"""


class EvaluateMeanIoU(evaluate.Metric):
    """evaluate's `mean_iou`, with `fpn_seg.metrics.mean_iou` doing the counting (one map at a time)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # As evaluate's `mean_iou`: maps are stored as images (lossless PNG for uint8, TIFF for wider integers).
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num=None,
        label_map=None,
        reduce_labels: bool = False,
    ) -> dict:
        return mean_iou(
            predictions,
            references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
