from pathlib import Path

import pytest

from chimuf.core.config import (
    StudyConfig,
    differences,
    load_config,
    to_toml,
)
from chimuf.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_paper_protocol():
    c = load_config()
    assert c.profile == "paper"
    assert (c.split.test_fraction, c.split.validation_fraction) == (0.2, 0.125)
    assert (c.train.epochs, c.train.patience, c.train.start_from_epoch) == (50, 5, 15)
    assert c.kfold.folds == 5 and not c.augment.augment_validation


def test_profile_then_file_then_overrides(tmp_path):
    path = write(tmp_path, 'profile = "smoke"\n[train]\nepochs = 3\n')
    c = load_config(path, overrides={"seed": 7})
    assert c.profile == "smoke" and c.data.max_per_class == 50
    assert c.train.epochs == 3 and c.seed == 7


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"`train.epoch`.*did you mean `train.epochs`"):
        load_config(write(tmp_path, "[train]\nepoch = 3\n"))


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key `trian`"):
        load_config(write(tmp_path, "[trian]\nepochs = 3\n"))


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[train]\nepochs = 0\n", "`train.epochs` must be a whole number from 1 to 10,000"),
        ('[train]\nepochs = "ten"\n', "`train.epochs` must be a whole number"),
        ("[split]\ntest_fraction = 1.5\n", "`split.test_fraction` must be between 0 and 1"),
        ('[train]\nprecision = "fp8"\n', "`train.precision` must be 'auto'"),
        ("[train]\nmodels = [4]\n", "`train.models` must be a non-empty list of 1, 2, 3"),
        ("[tune]\nconv1_filters = [64, 16, 16]\n", "`tune.conv1_filters` must be \\[min, max, step\\]"),
        ("[augment]\nhorizontal_flip = 1\n", "`augment.horizontal_flip` must be true or false"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, toml))


def test_unknown_profile_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: paper, quick, fast, smoke"):
        load_config(profile="fastest")


def test_invalid_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_printed_toml_loads_back_to_the_same_config(tmp_path):
    c = load_config(profile="quick", overrides={"seed": 3})
    again = load_config(write(tmp_path, to_toml(c)))
    assert again == c


def test_differences_from_the_paper():
    diffs = dict((k, (a, b)) for k, a, b in differences(load_config(profile="smoke")))
    assert diffs["train.epochs"] == (50, 2)
    assert "split.test_fraction" not in diffs
    assert differences(StudyConfig()) == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("seed = -1\n", r"`seed` must be a whole number from 0 to 4294967295"),
        ("seed = 4294967296\n", r"`seed` must be a whole number from 0 to 4294967295"),
        ("[audit]\nmax_file_mb = nan\n", r"`audit.max_file_mb` must be a finite number, got nan"),
        ("[audit]\nmax_file_mb = inf\n", r"`audit.max_file_mb` must be a finite number, got inf"),
        ("[audit]\nmax_file_mb = -1\n", r"`audit.max_file_mb` must be a positive number of MiB, got -1.0"),
        ("[train]\nlearning_rate = inf\n", r"`train.learning_rate` must be a finite number"),
        ("[tune]\nworker_timeout_s = -inf\n", r"`tune.worker_timeout_s` must be a finite number"),
        ("[tune]\ndropout_conv = [0.0, nan, 0.1]\n", r"`tune.dropout_conv` must be a finite number"),
        ("[data]\nimage_size = 4096\n", r"`data.image_size` must be between 16 and 512 pixels"),
        ("[kfold]\nfolds = 100000\n", r"`kfold.folds` must be between 2 and 100"),
        ("[tune]\nconv1_filters = [128, 32, 32]\n", r"`tune.conv1_filters` must be \[min, max, step\]"),
        ("[tune]\ndense_units = [32, 100000, 32]\n", r"`tune.dense_units` .*within \[1, 1024\]"),
        ("[tune]\ndropout_dense = [0.0, 0.5, 1e-12]\n", r"`tune.dropout_dense` .*at most 1000 values"),
        ("[model_files]\nmax_params = 0\n", r"`model_files.max_params` must be at least 1"),
    ],
)
def test_values_that_would_crash_or_mislead_later_are_refused_by_name(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, toml))


def test_profile_given_as_a_list_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError,
                       match=r"`profile` must be a string, one of paper, quick, fast, smoke; got \["):
        load_config(write(tmp_path, 'profile = ["smoke"]\n'))


def test_deeply_nested_toml_arrays_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="nests arrays or tables too deeply"):
        load_config(write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n"))


def test_every_float_field_is_checked_finite_whatever_its_own_check(tmp_path):
    import dataclasses

    def float_fields(config, where=""):
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                yield from float_fields(value, f"{where}{f.name}.")
            elif isinstance(value, float):
                yield where, f.name

    found = list(float_fields(StudyConfig()))
    assert len(found) > 10
    for section, name in found:
        toml = f"[{section.rstrip('.')}]\n{name} = nan\n"
        with pytest.raises(ConfigError, match=f"`{section}{name}` must be a finite number"):
            load_config(write(tmp_path, toml))
