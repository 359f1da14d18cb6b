"""Model files are untrusted: what is refused, and that it is refused before anything is built."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from chimuf.core.errors import ModelError
from chimuf.ml import modelfile


def tiny_model(output_activation: str = "sigmoid", lambda_layer: bool = False):
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    if lambda_layer:
        x = layers.Lambda(lambda t: t * 2)(x)
    x = layers.Conv2D(2, 3, activation="relu", name="conv1")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(1, activation=output_activation, name="output")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "good.keras"
    tiny_model().save(path)
    return path


def rewrite_config(source: Path, target: Path, change) -> Path:
    """Copy a .keras archive with its config.json passed through `change(dict) -> dict`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "config.json":
                data = json.dumps(change(json.loads(data))).encode()
            new.writestr(item, data)
    return target


def refuse_to_deserialise(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was deserialised although its check should have refused it")

    monkeypatch.setattr(modelfile, "deserialise", fail)


def test_good_model_loads_and_reports_its_input_size(saved_model):
    model = modelfile.load_model(saved_model)
    assert modelfile.input_size(model) == 16


def test_h5_file_is_refused_by_name(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ModelError, match=r"not a `\.keras` file.*HDF5"):
        modelfile.load_model(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        modelfile.load_model(tmp_path / "absent.keras")


def test_garbage_named_keras_is_not_an_archive(tmp_path):
    path = tmp_path / "garbage.keras"
    path.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(ModelError, match="not a Keras archive"):
        modelfile.load_model(path)


def test_zip_without_config_is_refused(tmp_path):
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match=r"without config\.json"):
        modelfile.load_model(path)


def test_lambda_layer_is_refused_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "lambda.keras"
    tiny_model(lambda_layer=True).save(path)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match="Lambda"):
        modelfile.load_model(path)


def test_class_from_a_foreign_module_is_refused_and_named(saved_model, tmp_path, monkeypatch):
    def smuggle(config):
        config["config"]["layers"][1]["module"] = "evil.payload"
        return config

    path = rewrite_config(saved_model, tmp_path / "foreign.keras", smuggle)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match=r"`evil\.payload`"):
        modelfile.load_model(path)


def test_foreign_registered_custom_object_is_refused(saved_model, tmp_path, monkeypatch):
    def smuggle(config):
        config["config"]["layers"][1]["registered_name"] = "evil>Payload"
        return config

    path = rewrite_config(saved_model, tmp_path / "registered.keras", smuggle)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match="evil>Payload"):
        modelfile.load_model(path)


def test_model_without_a_sigmoid_output_is_refused(tmp_path):
    path = tmp_path / "linear.keras"
    tiny_model(output_activation="linear").save(path)
    with pytest.raises(ModelError, match="sigmoid"):
        modelfile.load_model(path)


def test_old_keras_is_refused_with_the_upgrade_command():
    with pytest.raises(ModelError, match=re.escape("pip install -U 'keras>=3.14.1'")):
        modelfile.check_keras_version("3.14.0")
    modelfile.check_keras_version("3.14.1")
    modelfile.check_keras_version("3.15.1")
    modelfile.check_keras_version("4.0.0rc1")


def test_class_names_round_trip_beside_the_model(tmp_path):
    model_path = tmp_path / "final.keras"
    assert modelfile.read_classes(model_path) is None
    written = modelfile.write_classes(model_path, ["chihuahua", "muffin"])
    assert written.name == "final.classes.json"
    assert modelfile.read_classes(model_path) == ["chihuahua", "muffin"]
    written.write_text('{"classes": ["only one"]}')
    with pytest.raises(ModelError, match="two class names"):
        modelfile.read_classes(model_path)
