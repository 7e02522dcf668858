"""transformers' own ``ModelTesterMixin`` and ``ConfigTester``, run against the vit_zoo classes the way transformers'
``CLIPVisionModelTest`` runs them: a model tester, ``all_model_classes``, and only the overrides CLIP's vision test
has.

The mixins come from the installed transformers' sdist (``upstream.transformers_test_package``). transformers lists
its own models in the static name tables of its Auto classes, which the mixin consults (e.g. to add ``labels`` for an
image classifier, or to leave base models out of the training tests); vit_zoo registers through
``AutoModel.register`` instead, so its two classes are added to those tables for the duration of this module.
"""

import inspect
import sys
import unittest
from unittest import mock

import pytest
from torch import nn
from transformers.models.auto import modeling_auto
from upstream import transformers_test_package

from vit_zoo import VitZooConfig, VitZooForImageClassification, VitZooModel

sys.path.insert(0, str(transformers_test_package()))
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def listed_in_transformers_auto_tables():
    model_type = VitZooConfig.model_type
    with (
        mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {model_type: VitZooModel.__name__}),
        mock.patch.dict(
            modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
            {model_type: VitZooForImageClassification.__name__},
        ),
    ):
        yield


class VitZooModelTester:
    """CLIPVisionModelTester's sizes, in transformers' names (``VitZooConfig.attribute_map``)."""

    def __init__(
        self,
        parent,
        batch_size=12,
        image_size=30,
        patch_size=2,
        num_channels=3,
        is_training=True,
        hidden_size=32,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=3,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = is_training
        self.hidden_size = hidden_size
        self.projection_dim = projection_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.num_labels = num_labels
        # the CLS token, then one token per patch
        self.seq_length = (image_size // patch_size) ** 2 + 1

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def get_config(self):
        return VitZooConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            projection_dim=self.projection_dim,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            mlp_ratio=self.intermediate_size / self.hidden_size,
            num_labels=self.num_labels,
        )

    def create_and_check_model(self, config, pixel_values):
        model = VitZooModel(config).eval()
        result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(result.image_embeds.shape, (self.batch_size, self.projection_dim))
        self.parent.assertEqual(config.intermediate_size, self.intermediate_size)

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class VitZooModelTest(ModelTesterMixin, unittest.TestCase):
    """As CLIPVisionModelTest: vit_zoo takes pixel values only, no input_ids, inputs_embeds or attention_mask."""

    all_model_classes = (VitZooModel, VitZooForImageClassification)
    test_resize_embeddings = False

    def setUp(self):
        self.model_tester = VitZooModelTester(self)
        # CLIP's tester passes hidden_size=37; width must divide by the default 12 heads here, hence 36
        self.config_tester = ConfigTester(self, config_class=VitZooConfig, has_text_modality=False, width=36)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="vit_zoo does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            x = model.get_output_embeddings()
            self.assertTrue(x is None or isinstance(x, nn.Linear))

    def test_forward_signature(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            arg_names = [*inspect.signature(model.forward).parameters.keys()]
            self.assertListEqual(arg_names[:1], ["pixel_values"])

    def test_model(self):
        config_and_inputs = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(*config_and_inputs)
