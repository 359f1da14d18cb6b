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
        ("[train]\nepochs = 0\n", "`train.epochs` must be at least 1"),
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
    with pytest.raises(ConfigError, match="allowed: paper, quick, smoke"):
        load_config(profile="fast")


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
