"""Model files are untrusted: what is refused, and that it is refused before anything is built."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from chimuf.core.errors import ModelError
from chimuf.ml.modelfiles import modelfile


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


def test_the_sidecar_names_the_positive_class_and_refuses_one_that_is_not_second(tmp_path):
    import json

    model_path = tmp_path / "final.keras"
    written = modelfile.write_classes(model_path, ["muffin", "chihuahua"])
    assert json.loads(written.read_text())["positive"] == "chihuahua"
    assert modelfile.read_sidecar(model_path).positive == "chihuahua"
    written.write_text('{"classes": ["muffin", "chihuahua"], "positive": "muffin"}')
    with pytest.raises(ModelError, match=r"`positive` must be the second class, 'chihuahua'"):
        modelfile.read_sidecar(model_path)


# --- hostile archives: refused by their inventory, before anything is extracted ----------------


def flat_model():
    """16x16x3 → Flatten (768) → Dense(4) → sigmoid: a Dense layer whose width a file can inflate."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = layers.Dense(4, name="wide")(layers.Flatten()(inputs))
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="output")(x))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """The tiny model after one training step, saved as chimuf saves models (optimizer included)."""
    import numpy as np

    from chimuf.ml.architectures.models import save_model

    model = tiny_model()
    model.fit(np.zeros((2, 16, 16, 3), "float32"), np.zeros((2, 1), "float32"), epochs=1, verbose=0)
    return save_model(model, tmp_path_factory.mktemp("trained") / "trained.keras")


@pytest.fixture(scope="module")
def flat_saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("flat") / "flat.keras"
    flat_model().save(path)
    return path


@pytest.fixture
def temp_folder(tmp_path, monkeypatch) -> dict:
    """The temp folder pointed at an empty folder of the test's own, and every mkdtemp recorded."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    made: list[str] = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return {"folder": folder, "made": made}


def left_in(temp: dict) -> list[str]:
    return sorted(p.name for p in temp["folder"].iterdir())


def members_of(source: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(source) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_archive(target: Path, members: dict[str, bytes], extra: list | None = None,
                  compression: int = zipfile.ZIP_STORED) -> Path:
    """A .keras archive of `members` (name → bytes), then `extra` (ZipInfo or name, bytes) pairs."""
    with zipfile.ZipFile(target, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for info, data in extra or []:
            archive.writestr(info, data)
    return target


def refused_unread(path: Path, temp: dict, monkeypatch, match: str, **kwargs) -> ModelError:
    """Loading `path` raises ModelError matching `match` in one line, nothing was extracted."""
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match=match) as caught:
        modelfile.load_model(path, **kwargs)
    assert "\n" not in str(caught.value)
    assert temp["made"] == [] and left_in(temp) == []
    return caught.value


def test_archive_with_an_extra_member_is_refused_before_extraction(saved_model, tmp_path, temp_folder,
                                                                   monkeypatch):
    # The issue's bomb: two 250 MiB assets, plus `assets/x` and `assets/x/y` to make Keras' own
    # extraction fail and leave them behind. Here one small asset is enough to be refused.
    path = write_archive(tmp_path / "assets.keras", members_of(saved_model),
                         [("assets/x", b"0" * 1000), ("assets/x/y", b"1")])
    refused_unread(path, temp_folder, monkeypatch, r"holds `assets/x`, `assets/x/y`: .* exactly config\.json")


@pytest.mark.parametrize("name", ["../model.weights.h5", "/config.json", "assets\\..\\evil.py", "C:/x.json"])
def test_member_names_that_point_outside_the_archive_are_refused(saved_model, tmp_path, temp_folder,
                                                                 monkeypatch, name):
    path = write_archive(tmp_path / "names.keras", members_of(saved_model), [(name, b"x")])
    refused_unread(path, temp_folder, monkeypatch, "points outside the archive or is not a plain name")


@pytest.mark.parametrize("missing", ["metadata.json", "model.weights.h5"])
def test_archive_missing_a_keras_member_is_refused(saved_model, tmp_path, temp_folder, monkeypatch, missing):
    members = {k: v for k, v in members_of(saved_model).items() if k != missing}
    path = write_archive(tmp_path / "missing.keras", members)
    refused_unread(path, temp_folder, monkeypatch, f"has no `{re.escape(missing)}`")


def test_a_member_given_twice_is_refused(saved_model, tmp_path, temp_folder, monkeypatch):
    members = members_of(saved_model)
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_archive(tmp_path / "twice.keras", members, [("config.json", members["config.json"])])
    refused_unread(path, temp_folder, monkeypatch, "holds member `config.json` 2 times")


def test_symlink_member_is_refused(saved_model, tmp_path, temp_folder, monkeypatch):
    import stat

    members = members_of(saved_model)
    link = zipfile.ZipInfo("model.weights.h5")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    del members["model.weights.h5"]
    path = write_archive(tmp_path / "link.keras", members, [(link, b"/etc/passwd")])
    refused_unread(path, temp_folder, monkeypatch, "`model.weights.h5` is a symbolic link")


def set_central_flag(path: Path, member: str, bit: int) -> None:
    """Set a general-purpose flag bit of `member` in the archive's central directory (zipfile
    itself refuses to write an encrypted flag without encrypting)."""
    data = bytearray(path.read_bytes())
    record = data.index(b"PK\x01\x02")
    while True:
        name_length = int.from_bytes(data[record + 28:record + 30], "little")
        if data[record + 46:record + 46 + name_length] == member.encode():
            break
        record = data.index(b"PK\x01\x02", record + 4)
    flags = int.from_bytes(data[record + 8:record + 10], "little") | bit
    data[record + 8:record + 10] = flags.to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_encrypted_member_is_refused(saved_model, tmp_path, temp_folder, monkeypatch):
    path = write_archive(tmp_path / "encrypted.keras", members_of(saved_model))
    set_central_flag(path, "model.weights.h5", 0x1)
    refused_unread(path, temp_folder, monkeypatch, "`model.weights.h5` is encrypted")


def test_unsupported_compression_is_refused(saved_model, tmp_path, temp_folder, monkeypatch):
    path = write_archive(tmp_path / "lzma.keras", members_of(saved_model), compression=zipfile.ZIP_LZMA)
    refused_unread(path, temp_folder, monkeypatch, "compression method 14; chimuf reads stored and deflated")


def test_a_500_mib_member_of_zeros_is_refused_before_anything_is_extracted(saved_model, tmp_path,
                                                                          temp_folder, monkeypatch):
    members = members_of(saved_model)
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name in ("metadata.json", "config.json"):
            archive.writestr(name, members[name])
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(500):  # 500 MiB through zlib, a MiB at a time: about 0.5 MB on disk
                member.write(zeros)
    assert path.stat().st_size < 5 << 20
    refused_unread(path, temp_folder, monkeypatch, r"claims 524,288,000 bytes from .* ratio above 100:1")


def test_weights_member_larger_than_its_parameters_need_is_refused_unread(saved_model, tmp_path,
                                                                          temp_folder, monkeypatch):
    import os

    members = members_of(saved_model)
    members["model.weights.h5"] = os.urandom(3 << 20)  # 3 MiB stored for a model of 59 parameters
    path = write_archive(tmp_path / "fat.keras", members)
    refused_unread(path, temp_folder, monkeypatch, r"model\.weights\.h5 claims 3,145,728 bytes, but its 59 "
                   r"parameters need at most")


def test_members_adding_up_to_more_than_the_largest_model_can_need_are_refused_unread(
        saved_model, tmp_path, temp_folder, monkeypatch):
    import os

    from chimuf.core.config import ModelFilesConfig
    from chimuf.ml.modelfiles import modelsize

    monkeypatch.setattr(modelsize, "MAX_LAYERS", 1)  # the cap: 1 parameter, 1 layer: about 5.3 MB
    members = members_of(saved_model)
    members["model.weights.h5"] = os.urandom(6 << 20)
    path = write_archive(tmp_path / "total.keras", members)
    refused_unread(path, temp_folder, monkeypatch, r"its members add up to 6,\d{3},\d{3} bytes uncompressed",
                   limits=ModelFilesConfig(max_params=1))


def test_dense_layer_of_two_million_units_is_refused_before_keras_allocates_it(flat_saved, tmp_path,
                                                                              temp_folder, monkeypatch):
    def widen(config):
        config["config"]["layers"][2]["config"]["units"] = 2_000_000  # 768 x 2 000 000 weights
        return config

    path = rewrite_config(flat_saved, tmp_path / "wide.keras", widen)
    refused_unread(path, temp_folder, monkeypatch,
                   r"declares 1,540,000,001 parameters .* more than `model_files.max_params` = 50,000,000")


def test_the_parameter_cap_comes_from_the_config(flat_saved, temp_folder, monkeypatch):
    from chimuf.core.config import ModelFilesConfig

    refused_unread(flat_saved, temp_folder, monkeypatch, "more than `model_files.max_params` = 1,000",
                   limits=ModelFilesConfig(max_params=1000))


def test_config_json_nested_100000_deep_is_one_line(saved_model, tmp_path, temp_folder, monkeypatch):
    members = members_of(saved_model)
    members["config.json"] = b"[" * 100_000 + b"]" * 100_000
    path = write_archive(tmp_path / "deep.keras", members)
    refused_unread(path, temp_folder, monkeypatch, "config.json nests 100,000 levels deep")


@pytest.mark.parametrize(("member", "data", "match"), [
    ("config.json", b"\xff\xfe not utf-8", "config.json is not UTF-8 text"),
    ("config.json", b'{"class_name": "Functional", ', "config.json is not valid JSON"),
    ("config.json", b"1" * 5000, "config.json is not valid JSON"),  # past Python's 4300-digit limit
    ("metadata.json", b'["keras_version"]', "metadata.json is not a JSON object"),
    ("metadata.json", b" " * (65 * 1024) + b"{}", r"metadata.json claims 66,\d+ bytes, more than the 65,536"),
    ("config.json", b" " * (5 * 1024 * 1024) + b"{}",
     r"config.json claims 5,242,882 bytes, more than the 4,194,304"),
], ids=["config-not-utf8", "config-cut-short", "config-huge-number", "metadata-not-object",
        "metadata-too-large", "config-too-large"])
def test_json_members_that_cannot_be_read_are_one_line(saved_model, tmp_path, temp_folder, monkeypatch,
                                                       member, data, match):
    members = members_of(saved_model)
    members[member] = data
    path = write_archive(tmp_path / "bad-json.keras", members)
    refused_unread(path, temp_folder, monkeypatch, match)


def test_hdf5_declaring_more_than_its_parameters_need_is_refused_before_keras_reads_it(
        saved_model, tmp_path, temp_folder, monkeypatch):
    import h5py

    shell = tmp_path / "shell.h5"
    with h5py.File(shell, "w") as weights:  # 200 MB declared, nothing written: a few kB on disk
        weights.create_dataset("bomb", shape=(50_000_000,), dtype="f4", compression="gzip", chunks=True)
    members = members_of(saved_model)
    members["model.weights.h5"] = shell.read_bytes()
    path = write_archive(tmp_path / "shape-bomb.keras", members)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match=r"declares arrays of 200,000,000 bytes"):
        modelfile.load_model(path)
    assert len(temp_folder["made"]) == 1 and left_in(temp_folder) == []  # extracted, then removed


def flip_a_byte_of(path: Path, member: str) -> None:
    """Damage a stored member's data in place (its CRC no longer matches)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    header = info.header_offset
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], "little") + \
        int.from_bytes(data[header + 28:header + 30], "little")
    data[start + info.compress_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flipped_weights_member_is_one_line_and_leaves_nothing_behind(saved_model, tmp_path,
                                                                         temp_folder, monkeypatch):
    path = write_archive(tmp_path / "flipped.keras", members_of(saved_model))
    flip_a_byte_of(path, "model.weights.h5")
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match=r"model\.weights\.h5 cannot be read \(BadZipFile: Bad CRC-32"):
        modelfile.load_model(path)
    assert len(temp_folder["made"]) == 1 and left_in(temp_folder) == []


def test_chimuf_saved_model_with_its_optimizer_loads_and_leaves_nothing_behind(trained_model, temp_folder):
    with zipfile.ZipFile(trained_model) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    model = modelfile.load_model(trained_model)
    assert modelfile.input_size(model) == 16
    assert len(temp_folder["made"]) == 1 and left_in(temp_folder) == []


# --- messages ----------------------------------------------------------------------------------


def test_keras_error_is_one_line_with_its_full_text_as_detail(saved_model, tmp_path, temp_folder):
    def unknown_activation(config):
        config["config"]["layers"][2]["config"]["activation"] = "no_such_activation"
        return config

    path = rewrite_config(saved_model, tmp_path / "activation.keras", unknown_activation)
    with pytest.raises(ModelError, match="could not be loaded by Keras") as caught:
        modelfile.load_model(path)
    assert "\n" not in str(caught.value) and "no_such_activation" in str(caught.value)
    assert "no_such_activation" in caught.value.detail and len(caught.value.detail) > len(str(caught.value))
    assert left_in(temp_folder) == []


def test_a_non_model_object_in_config_json_is_one_line(saved_model, tmp_path, monkeypatch):
    def not_a_model(_config):
        return {"module": "keras.utils", "class_name": "function", "config": "get_file",
                "registered_name": "function"}

    path = rewrite_config(saved_model, tmp_path / "function.keras", not_a_model)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match=r"its top object is `keras.utils.function`, not a Keras model"):
        modelfile.load_model(path)


@pytest.mark.parametrize(("kind", "words"), [("folder", "is a folder"), ("fifo", "is a named pipe"),
                                             ("device", "is a character device")])
def test_model_path_that_is_not_a_file_says_what_it_is(tmp_path, kind, words):
    import os

    path = tmp_path / "model.keras"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/null")
    with pytest.raises(ModelError, match=words):
        modelfile.load_model(path)


def test_tfsmlayer_refusal_names_the_savedmodel_not_lambda_layers(saved_model, tmp_path, monkeypatch):
    def smuggle(config):
        config["config"]["layers"][2]["class_name"] = "TFSMLayer"
        return config

    path = rewrite_config(saved_model, tmp_path / "tfsm.keras", smuggle)
    refuse_to_deserialise(monkeypatch)
    with pytest.raises(ModelError, match="SavedModel") as caught:
        modelfile.load_model(path)
    assert "Lambda" not in str(caught.value)


def test_model_input_larger_than_chimuf_reads_is_refused(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((600, 600, 3)), layers.GlobalAveragePooling2D(),
                              layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "big.keras")
    with pytest.raises(ModelError, match="600 x 600 pixels; chimuf reads images of at most 512"):
        modelfile.input_size(modelfile.load_model(tmp_path / "big.keras"))
