"""transformers' own common tests on Semantic FPN: `ModelTesterMixin` with our ResNetV1c backbone and with a tiny
transformers `ResNetConfig` backbone, `ConfigTester` on both configs, `ImageProcessingTestMixin` on the processor.

The mixins come from the sdist of the installed transformers version (`tests/transformers_suite.py`, run by
`make test`); every skip below carries its reason.
"""

import sys
import unittest

import numpy as np
import pytest
from PIL import Image
from transformers_suite import PACKAGE, suite_root

if not (suite_root() / ".complete").is_file():
    raise RuntimeError(
        f"transformers' common tests are not unpacked in {suite_root()}: run `python tests/transformers_suite.py` "
        "(make test does)."
    )
sys.path.insert(0, str(suite_root()))

import torch  # noqa: E402
from transformers import ResNetConfig  # noqa: E402
from transformers.modeling_outputs import SemanticSegmenterOutput  # noqa: E402

from fpn_seg import (  # noqa: E402
    ResNetV1cConfig,
    SemanticFPNConfig,
    SemanticFPNForSemanticSegmentation,
    SemanticFPNImageProcessor,
)

common = __import__(f"{PACKAGE}.test_modeling_common", fromlist=["ModelTesterMixin"])
config_common = __import__(f"{PACKAGE}.test_configuration_common", fromlist=["ConfigTester"])
image_common = __import__(f"{PACKAGE}.test_image_processing_common", fromlist=["ImageProcessingTestMixin"])
ModelTesterMixin, floats_tensor, ids_tensor = common.ModelTesterMixin, common.floats_tensor, common.ids_tensor
ConfigTester = config_common.ConfigTester
ImageProcessingTestMixin, ImageProcessingTester = image_common.ImageProcessingTestMixin, image_common.ImageProcessingTester
PostProcessSemanticSegmentationTestMixin = image_common.PostProcessSemanticSegmentationTestMixin


class SemanticFPNModelTester:
    """Tiny configs and inputs for the mixin; `backbone` picks our ResNetV1c or transformers' ResNet."""

    def __init__(self, parent, backbone: str = "resnet_v1c", batch_size=2, image_size=64, num_labels=3):
        self.parent, self.backbone = parent, backbone
        self.batch_size, self.image_size, self.num_labels = batch_size, image_size, num_labels
        self.num_channels = 3
        self.is_training = True

    def get_backbone_config(self):
        if self.backbone == "resnet_v1c":
            return ResNetV1cConfig(depth=18, stem_channels=8, base_channels=8)
        return ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )  # fmt: skip

    def get_config(self):
        return SemanticFPNConfig(
            backbone_config=self.get_backbone_config(),
            neck_channels=16,
            head_channels=8,
            id2label={index: f"class_{index}" for index in range(self.num_labels)},
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        self.labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, self.labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class SemanticFPNCommonTests(ModelTesterMixin):
    """The mixin's tests; the subclasses below pick the backbone."""

    all_model_classes = (SemanticFPNForSemanticSegmentation,)
    has_attentions = False  # a CNN
    test_resize_embeddings = False  # no embeddings
    test_torch_exportable = False  # the export tests are not in the sdist (see transformers_suite.py)
    # transformers runs `test_can_init_all_missing_weights` for models of 2023 on (read from a "# Copyright" line that
    # our files do not have); every parameter must be covered by `_init_weights`, so the test runs here.
    test_can_init_all_missing_weights_before_2023 = True
    backbone = "resnet_v1c"

    def setUp(self):
        self.model_tester = SemanticFPNModelTester(self, backbone=self.backbone)
        self.config_tester = ConfigTester(self, config_class=SemanticFPNConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds segmentation labels for the models of its own semantic-segmentation mapping only.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict["labels"] = self.model_tester.labels.clone()
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_hidden_states_output(self):
        """The CNN version of the mixin's test (written for token sequences): the backbone's stem and four stages,
        then the four FPN levels, finest first, at strides 4, 4, 8, 16, 32 and 4, 8, 16, 32."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = SemanticFPNForSemanticSegmentation(config).eval()
        with torch.no_grad():
            hidden_states = model(**inputs_dict, output_hidden_states=True).hidden_states
        size = self.model_tester.image_size
        strides = [4, 4, 8, 16, 32, 4, 8, 16, 32] if self.backbone == "resnet_v1c" else [4, 4, 8, 16, 32, 4, 8, 16, 32]
        if self.backbone == "resnet":  # transformers' ResNet: embeddings (stride 4) and four stages
            strides = [4, 4, 8, 16, 32, 4, 8, 16, 32]
        self.assertEqual([tuple(state.shape[-2:]) for state in hidden_states], [(size // s, size // s) for s in strides])
        self.assertTrue(all(state.shape[-3] == config.neck_channels for state in hidden_states[-4:]))

    @unittest.skip(reason="Semantic FPN has no input embeddings (a CNN on pixels)")
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(reason="Semantic FPN has no input embeddings (a CNN on pixels)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="Semantic FPN has no input embeddings (a CNN on pixels)")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class SemanticFPNWithResNetV1cTest(SemanticFPNCommonTests, unittest.TestCase):
    backbone = "resnet_v1c"


class SemanticFPNWithTransformersResNetTest(SemanticFPNCommonTests, unittest.TestCase):
    backbone = "resnet"
    _no_checkpointing = "transformers' ResNetBackbone has no gradient checkpointing (our model refuses it, naming the backbone)"

    @unittest.skip(reason=_no_checkpointing)
    def test_gradient_checkpointing_backward_compatibility(self):
        pass

    @unittest.skip(reason=_no_checkpointing)
    def test_gradient_checkpointing_enable_disable(self):
        pass

    @unittest.skip(reason=_no_checkpointing)
    def test_peft_gradient_checkpointing_enable_disable(self):
        pass

    @unittest.skip(reason=_no_checkpointing)
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason=_no_checkpointing)
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason=_no_checkpointing)
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass


class ResNetV1cConfigTest(unittest.TestCase):
    def test_config(self):
        tester = ConfigTester(
            self, config_class=ResNetV1cConfig, has_text_modality=False, common_properties=["num_channels", "hidden_sizes"],
            depth=18, base_channels=8,
        )  # fmt: skip
        tester.run_common_tests()


class SemanticFPNImageProcessingTester(ImageProcessingTester):
    """transformers' default tester settings (7 random images of 30..400 pixels) with a keep-ratio `size` dict, as
    transformers' testers of keep-ratio processors (DETR, Mask2Former) pass it."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"shortest_edge": 18, "longest_edge": 1333})
        super().__init__(parent, **kwargs)
        self.num_labels = 5  # of the post-processing tests' logits

    def _get_image_processing_classes(self):
        # Real difference: transformers finds the classes from the test folder's name (a model of its own tree);
        # ours is a registered model, with one processor class (torch only), registered for both backend names.
        return {"torchvision": SemanticFPNImageProcessor, "pil": SemanticFPNImageProcessor}

    def expected_output_image_shape(self, images):
        # Real difference: mmseg's keep-ratio rule rounds each side to nearest, `int(side * f + 0.5)` with
        # `f = min(shortest / min(h, w), longest / max(h, w))`, where transformers' `get_size_with_aspect_ratio` sets
        # the short side to `shortest_edge` and truncates the other; the two differ by a pixel on some images.
        if "shortest_edge" not in self.size:
            return super().expected_output_image_shape(images)
        sizes = []
        for image in images:
            if isinstance(image, Image.Image):
                height, width = image.height, image.width
            else:  # transformers' test arrays are (H, W, C), its tensors (C, H, W)
                height, width = image.shape[:2] if isinstance(image, np.ndarray) else image.shape[-2:]
            factor = min(self.size["shortest_edge"] / min(height, width), self.size["longest_edge"] / max(height, width))
            sizes.append((int(height * factor + 0.5), int(width * factor + 0.5)))
        return self.num_channels, max(size[0] for size in sizes), max(size[1] for size in sizes)

    def prepare_post_process_semantic_segmentation_inputs(self):
        # Real difference: the base takes the logits' size from size["height"] / size["width"], which a keep-ratio
        # size does not have; the logits are at a processed size, as the model returns them.
        if "height" in self.size:
            return super().prepare_post_process_semantic_segmentation_inputs()
        height, width = 24, 40
        logits = torch.randn(self.batch_size, self.num_labels, height, width)
        return {"outputs": SemanticSegmenterOutput(logits=logits)}, {"num_labels": self.num_labels, "height": height, "width": width}


class SemanticFPNImageProcessingTest(PostProcessSemanticSegmentationTestMixin, ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = SemanticFPNImageProcessingTester

    def test_backends_equivalence(self):
        self.skipTest("loads an image from the Hugging Face hub (no network in tests); the batched variant runs")

    def test_pil_can_run_without_torchvision(self):
        self.skipTest(
            "its fresh interpreter loads the saved folder with AutoImageProcessor without importing fpn_seg and without "
            "trust_remote_code, which a registered (non-transformers) processor needs; the remote-code load is tested "
            "in tests/test_pipeline.py, and the processor never imports torchvision"
        )

    def test_image_processor_preprocess_arguments(self):
        # Real difference: transformers' processors warn about an unknown keyword and ignore it; ours refuses it
        # (TypeError naming it and the valid options), so a misspelt option never passes unnoticed.
        processor = SemanticFPNImageProcessor(**self.image_processor_dict)
        with self.assertRaisesRegex(TypeError, r"unknown options \['extra_argument'\]; valid options: \[.*'size'"):
            processor(self.image_processor_tester.prepare_image_inputs(), extra_argument=True)


class SemanticFPNFixedSizeImageProcessingTester(SemanticFPNImageProcessingTester):
    """The same with a fixed `size={"height", "width"}` (mmseg's keep_ratio=False resize)."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, size={"height": 32, "width": 48}, **kwargs)


class SemanticFPNFixedSizeImageProcessingTest(SemanticFPNImageProcessingTest):
    image_processor_tester_class = SemanticFPNFixedSizeImageProcessingTester


pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
