"""A user's own architecture: named in the config or given to the API, built seeded and checked,
and its saved file trusted by the study by digest even with layers the size counter cannot count;
an outside file with the same layers is refused as before."""

from __future__ import annotations

import pytest

from chimuf.core.config import load_config
from chimuf.core.errors import ConfigError, ModelError
from chimuf.ml.architectures import builders
from chimuf.ml.modelfiles import modelfile
from tests.own_builder import tiny


@pytest.fixture(autouse=True)
def no_vouched():
    modelfile.VOUCHED.clear()
    yield
    modelfile.VOUCHED.clear()


def test_the_config_names_builders_as_module_function() -> None:
    cfg = load_config(overrides={"candidates": {"builders": ["tests.own_builder:tiny"]}})
    assert builders.all_builders(cfg.candidates.builders, None) == {"tiny": tiny}
    with pytest.raises(ConfigError, match=r"'package\.module:function' names"):
        load_config(overrides={"candidates": {"builders": ["tests/own_builder.py"]}})
    with pytest.raises(ConfigError, match="cannot import `no_such_module`"):
        builders.resolve("no_such_module:build")
    with pytest.raises(ConfigError, match="distinct name"):
        builders.all_builders(("tests.own_builder:tiny",), {"tiny": tiny})


def test_a_builder_is_fingerprinted_by_its_source() -> None:
    assert builders.fingerprint(tiny) == builders.fingerprint(tiny)
    assert builders.fingerprint(tiny) != builders.fingerprint(builders.build)


@pytest.mark.slow
def test_a_builders_model_is_checked_and_compiled(tmp_path) -> None:
    model = builders.build("mine", tiny, 16, seed=3, learning_rate=1e-3)
    assert model.optimizer is not None and model.output_shape == (None, 1)
    with pytest.raises(ModelError, match=r"expected \(None, 24, 24, 3\)"):
        builders.build("mine", lambda image_size, seed: tiny(16, seed), 24, seed=3, learning_rate=1e-3)


@pytest.mark.slow
def test_the_studys_own_file_loads_by_digest_and_an_outside_one_is_refused(tmp_path) -> None:
    ours = builders.build("mine", tiny, 16, seed=3, learning_rate=1e-3)
    ours.save(tmp_path / "ours.keras")
    builders.build("other", tiny, 16, seed=4, learning_rate=1e-3).save(tmp_path / "outside.keras")
    with pytest.raises(ModelError, match="AdaptiveAveragePooling2D"):
        modelfile.load_model(tmp_path / "ours.keras")  # nobody vouched for it: counted, and refused
    modelfile.vouch([modelfile.file_sha256(tmp_path / "ours.keras")])
    assert modelfile.load_model(tmp_path / "ours.keras").count_params() == ours.count_params()
    with pytest.raises(ModelError, match="AdaptiveAveragePooling2D"):
        modelfile.load_model(tmp_path / "outside.keras")  # same layers, not the study's file
