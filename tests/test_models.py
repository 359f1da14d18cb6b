"""The paper's architectures (section 4), layer by layer, and what a saved model expects."""

from __future__ import annotations

import numpy as np
import pytest

from chimuf.core.errors import ConfigError
from chimuf.core.hyperparameters import MODEL3 as MODEL3_HYPERPARAMETERS
from chimuf.ml.architectures.models import (
    build_model,
    compile_model,
    conv_layer_names,
    layer_rows,
    model_precision,
    resolve_precision,
    save_model,
)

# The paper's best hyperparameters (section 6), as the tuner hands them on.
PAPER_BEST = {"conv1_filters": 16, "conv2_filters": 96, "conv3_filters": 192, "dense_units": 96,
              "dropout_conv": 0.05, "dropout_dense": 0.4}


def params_by_layer(model) -> dict[str, int]:
    return {row.name: row.params for row in layer_rows(model) if row.params}


def test_model1_parameter_counts_match_the_paper_layer_list_at_128_px():
    # conv 3·3·3·32+32; conv 3·3·32·64+64; dense (32·32·64)·64+64; output 64+1
    model = build_model("model1", 128)
    assert params_by_layer(model) == {"conv1": 896, "conv2": 18_496, "dense": 4_194_368, "output": 65}
    assert model.count_params() == 4_213_825


def test_model2_adds_only_dropout_to_model1():
    model = build_model("model2", 128)
    kinds = [row.kind for row in layer_rows(model)]
    assert kinds == ["Rescaling", "Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "MaxPooling2D", "Dropout",
                     "Flatten", "Dense", "Dropout", "Dense"]
    assert [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"] == [0.25, 0.25, 0.3]
    assert model.count_params() == 4_213_825


def test_model3_parameter_counts_match_the_paper_layer_list_at_128_px():
    # third conv 3·3·64·128+128; after three pools 16·16·128 features into dense 64
    model = build_model("model3", 128)
    assert params_by_layer(model) == {"conv1": 896, "conv2": 18_496, "conv3": 73_856,
                                      "dense": 2_097_216, "output": 65}
    assert model.count_params() == 2_190_529


def test_tuned_family_takes_its_sizes_from_the_hyperparameters():
    # 3·3·3·16+16; 3·3·16·96+96; 3·3·96·192+192; (8·8·192)·96+96; 96+1 at 64 px
    model = build_model("tuned", 64, PAPER_BEST)
    assert params_by_layer(model) == {"conv1": 448, "conv2": 13_920, "conv3": 166_080,
                                      "dense": 1_179_744, "output": 97}
    rates = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.05, 0.05, 0.05, 0.4]


def test_tuned_family_at_model3_values_is_model3():
    tuned, model3 = build_model("tuned", 64, MODEL3_HYPERPARAMETERS), build_model("model3", 64)
    assert [(r.kind, r.output_shape, r.params) for r in layer_rows(tuned)] == [
        (r.kind, r.output_shape, r.params) for r in layer_rows(model3)
    ]


def test_conv_layers_are_named_for_grad_cam():
    assert conv_layer_names(build_model("model1", 32)) == ["conv1", "conv2"]
    assert conv_layer_names(build_model("model3", 32)) == ["conv1", "conv2", "conv3"]
    assert build_model("model2", 32).layers[-1].name == "output"


def test_unknown_hyperparameter_key_is_named():
    with pytest.raises(ConfigError, match="missing: dense_units; unknown: units"):
        build_model("tuned", 32, {**{k: v for k, v in PAPER_BEST.items() if k != "dense_units"}, "units": 8})


def test_unknown_architecture_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"`model4`.*model1, model2, model3, tuned"):
        build_model("model4", 32)


def test_too_small_images_for_three_pools_are_refused():
    with pytest.raises(ConfigError, match="image_size 4 is too small for model3"):
        build_model("model3", 4)


def test_mixed_precision_is_per_layer_and_the_output_stays_float32():
    import keras

    model = build_model("model2", 32, precision="mixed_bfloat16")
    assert model_precision(model) == "mixed_bfloat16"
    assert model.get_layer("output").dtype_policy.name == "float32"
    assert model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # no global state was changed
    assert model_precision(build_model("model2", 32)) == "float32"


def test_saved_model_takes_raw_pixels_and_loads_in_safe_mode(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = build_model("model2", 16)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("float32")
    path = save_model(model, tmp_path / "m.keras")
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert loaded.input.dtype == "float32"
    np.testing.assert_array_equal(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0))
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no partial file left behind


def test_compiled_model_reports_accuracy_and_auc():
    model = build_model("model1", 16)
    compile_model(model, 1e-3)
    x = np.zeros((4, 16, 16, 3), "float32")
    logs = model.evaluate(x, np.array([0, 1, 0, 1], "float32"), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "auc"}


def test_explicit_precision_is_kept_and_auto_resolves_to_a_known_one():
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert resolve_precision("mixed_float16") == "mixed_float16"
    assert resolve_precision("auto") in ("float32", "mixed_bfloat16", "mixed_float16")
    with pytest.raises(ConfigError, match=r"`train\.precision`"):
        resolve_precision("fp8")
