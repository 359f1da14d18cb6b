"""The parameter count read from config.json equals what Keras builds, and hostile sizes are caught."""

from __future__ import annotations

import copy
import json

import pytest

from chimuf.core.errors import ModelError
from chimuf.core.hyperparameters import Hyperparameters
from chimuf.ml.modelfiles import modelsize

TUNER_LARGEST = Hyperparameters(64, 128, 256, 128, 0.5, 0.5)  # the top of every default range


def config_json(model) -> dict:
    """What `model.save` writes as config.json, parsed back as plain JSON."""
    import keras

    return json.loads(json.dumps(keras.saving.serialize_keras_object(model)))


@pytest.fixture(scope="module")
def paper_models() -> dict:
    from chimuf.ml.architectures.models import build_model

    built = {arch: build_model(arch, 128) for arch in ("model1", "model2", "model3")}
    built["tuned"] = build_model("tuned", 128, TUNER_LARGEST)
    return {name: (config_json(m), m.count_params()) for name, m in built.items()}


@pytest.fixture(scope="module")
def layer_zoo() -> tuple[dict, int]:
    """One small model with most layer types an image classifier uses, nested models included."""
    import keras
    from keras import layers as L

    inner = keras.Sequential([keras.Input((12, 14, 16)), L.Conv2D(4, 3), L.Flatten(), L.Dense(5)],
                             name="inner")
    inputs = keras.Input((40, 40, 3))
    x = L.Resizing(36, 36)(L.RandomFlip()(L.Rescaling(1 / 255)(inputs)))
    x = L.Cropping2D(1)(L.ZeroPadding2D(((1, 2), (3, 4)))(x))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 5, strides=2, use_bias=False)(x)))
    x = L.Concatenate()([L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x),
                         L.SeparableConv2D(16, 3, padding="same")(x)])
    x = L.Conv2D(32, 3, groups=4)(x)
    x = L.LayerNormalization()(L.Add()([x, L.Conv2D(32, 1)(x)]))
    x = L.Conv2DTranspose(6, 3, strides=2)(x)
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same", output_padding=1)(x)
    x = L.UpSampling2D()(L.AveragePooling2D(3, 2)(x))
    x = L.PReLU(shared_axes=[1, 2])(L.GroupNormalization(groups=3)(x))
    x = L.Conv2D(16, 3, strides=5)(x)
    branch = inner(x)
    x = L.Multiply()([L.GlobalAveragePooling2D()(x), L.Flatten()(L.GlobalMaxPooling2D(keepdims=True)(x))])
    x = L.MaxPooling1D(2, padding="same")(L.Conv1D(5, 2)(L.RepeatVector(4)(L.Flatten()(L.Permute((2, 1))(
        L.Reshape((2, 8))(x))))))
    x = L.Concatenate()([L.Flatten()(x), branch])
    outputs = L.Dense(1, activation="sigmoid")(L.Dropout(0.2)(L.Dense(7, lora_rank=2)(x)))
    model = keras.Model(inputs, outputs)
    return config_json(model), model.count_params()


@pytest.mark.parametrize("name", ["model1", "model2", "model3", "tuned"])
def test_parameter_count_of_the_papers_models_equals_keras_count(paper_models, name):
    config, keras_count = paper_models[name]
    assert modelsize.estimate(config).params == keras_count


def test_parameter_count_of_other_layer_types_and_nested_models_equals_keras_count(layer_zoo):
    config, keras_count = layer_zoo
    assert modelsize.estimate(config).params == keras_count


def test_a_build_config_claiming_a_larger_input_counts_what_keras_would_allocate(paper_models):
    config = copy.deepcopy(paper_models["model1"][0])
    dense = next(layer for layer in config["config"]["layers"] if layer["name"] == "dense")
    dense["build_config"]["input_shape"] = [None, 10_000_000]  # Keras builds from this first
    assert modelsize.estimate(config).params > 10_000_000 * 64


def test_a_graph_claiming_small_shapes_is_counted_from_the_real_ones(paper_models):
    config = copy.deepcopy(paper_models["model1"][0])
    for layer in config["config"]["layers"]:
        layer.pop("build_config", None)
        for node in layer.get("inbound_nodes", []):
            for tensor in node["args"]:
                tensor["config"]["shape"] = [None, 1]  # the file's own shape claims are ignored
    assert modelsize.estimate(config).params == paper_models["model1"][1]


def test_unknown_layer_type_is_refused_by_name(paper_models):
    config = copy.deepcopy(paper_models["model3"][0])
    config["config"]["layers"][2]["class_name"] = "EinsumDense"
    with pytest.raises(ModelError, match=r"layer `conv1` is a `keras.layers.EinsumDense`, whose size"):
        modelsize.estimate(config)


def test_upsampling_bomb_is_refused_by_its_tensor_size(paper_models):
    config = copy.deepcopy(paper_models["model1"][0])
    pool = next(layer for layer in config["config"]["layers"] if layer["name"] == "pool1")
    pool["class_name"] = "UpSampling2D"
    pool["config"] = {"name": "pool1", "size": [1000, 1000]}
    with pytest.raises(ModelError, match=r"`pool1` makes a tensor of shape \[None, 128000, 128000, 32\]"):
        modelsize.estimate(config)


def test_a_layer_whose_input_no_layer_makes_is_refused(paper_models):
    config = copy.deepcopy(paper_models["model1"][0])
    config["config"]["layers"][3]["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["ghost", 0, 0]
    with pytest.raises(ModelError, match="layer `ghost`, which no layer of the file makes"):
        modelsize.estimate(config)


def test_study_check_matches_keras_count_for_the_tuners_largest(paper_models):
    from chimuf.ml.architectures.models import blueprint, parameter_count

    assert parameter_count(blueprint("tuned", TUNER_LARGEST), 128) == paper_models["tuned"][1] == 8_759_681
