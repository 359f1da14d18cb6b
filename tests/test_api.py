"""The Python API: loaded lazily, settings as dicts or keywords, a run's tables as DataFrames, and
the worked example of docs/api.md run end to end on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import chimuf
from chimuf.api import nested
from chimuf.core.errors import ConfigError
from tests.conftest import make_dataset
from tests.report_fixture import complete_results, partial_results, write_run

ROOT = Path(__file__).resolve().parents[1]


def test_import_chimuf_loads_neither_tensorflow_nor_pandas_until_asked():
    code = ("import sys, json, chimuf\n"
            "heavy = ('tensorflow', 'keras', 'matplotlib', 'pandas')\n"
            "before = [m for m in heavy if m in sys.modules]\n"
            "chimuf.load_run\n"
            "after = [m for m in heavy if m in sys.modules]\n"
            "print(json.dumps([before, after, 'run_study' in dir(chimuf)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(done.stdout) == [[], [], True]


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'run_stduy'"):
        chimuf.run_stduy  # noqa: B018


def test_settings_may_be_nested_or_dotted():
    assert nested({"train.epochs": 3, "kfold": {"folds": 2}, "seed": 7, "train": {"batch_size": 8}}) == \
        {"train": {"epochs": 3, "batch_size": 8}, "kfold": {"folds": 2}, "seed": 7}
    with pytest.raises(ConfigError, match="nested too deep"):
        nested({"train.epochs.max": 3})


def test_a_bad_setting_is_the_configs_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key `train\.epoch`"):
        chimuf.run_study(tmp_path, profile="smoke", out=tmp_path / "run", train={"epoch": 3})


def test_a_runs_tables_are_dataframes_with_one_row_per_item(tmp_path):
    run = chimuf.load_run(write_run(tmp_path / "run", complete_results(tmp_path / "run")))
    r = run.results
    assert list(run.trainings()["name"]) == [t.name for t in r.train.trainings] + ["final"]
    assert len(run.epochs()) == sum(len(t.history) for t in r.train.trainings) + len(r.final.history)
    assert list(run.trials()["trial_id"]) == [t.trial_id for t in r.tune.trials]
    assert "conv1_filters" in run.trials().columns
    assert list(run.folds()["fold"]) == [f.fold for f in r.kfold.folds]
    predictions = run.predictions()
    assert len(predictions) == len(r.evaluate.predictions)
    assert list(predictions["right"]) == [p.right for p in r.evaluate.predictions.items()]
    per_class = run.per_class().set_index("class")
    assert per_class.loc["chihuahua", "f1_low"] == r.evaluate.per_class[0].f1_interval.low
    assert run.model_path == tmp_path / "run" / r.final.model_path


def test_a_partial_run_has_empty_tables_and_no_model(tmp_path):
    run = chimuf.load_run(write_run(tmp_path / "run", partial_results(tmp_path / "run")))
    assert run.trainings().empty and run.trials().empty and run.folds().empty
    assert "accuracy" in run.folds().columns
    assert run.model_path is None
    with pytest.raises(ConfigError, match="no final model yet"):
        run.predict([tmp_path / "x.png"])


@pytest.mark.slow
def test_the_worked_example_runs_end_to_end_on_tiny_data(tmp_path):
    data = make_dataset(tmp_path / "photos", per_class=16, size=48)
    env = dict(os.environ, CHIMUF_DATA=str(data), CHIMUF_CACHE_DIR=str(tmp_path / "cache"),
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "misclassified" in done.stdout
    assert "identical to itself: True" in done.stdout
    assert (tmp_path / "runs" / "notebook" / "report" / "index.pdf").is_file()
