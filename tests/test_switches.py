"""Switching off the six trainings, the search and the k-fold: the config says so, the study's
specs skip them, the final model falls back to the paper's hyperparameters, the report says so in
one line per section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from chimuf.core.config import load_config
from chimuf.core.hyperparameters import PAPER_BEST
from chimuf.core.results import StageFact
from chimuf.report.markdown import render_markdown
from chimuf.stages.specs import BY_NAME, best_hyperparameters
from tests.report_fixture import complete_results

OFF = {"train": {"enabled": False}, "tune": {"enabled": False}, "kfold": {"enabled": False}}


def test_each_switch_turns_its_stage_off_and_the_labels_with_the_folds() -> None:
    config = load_config(profile="smoke", overrides=OFF)
    off = {name: BY_NAME[name].off(config) for name in ("train", "tune", "kfold", "labels", "final")}
    assert off == {"train": "train.enabled = false", "tune": "tune.enabled = false",
                   "kfold": "kfold.enabled = false", "labels": "kfold.enabled = false", "final": ""}
    on = load_config(profile="smoke")
    assert not any(BY_NAME[name].off(on) for name in ("train", "tune", "kfold", "labels"))


def test_without_a_search_the_final_model_takes_the_papers_hyperparameters(tmp_path) -> None:
    results = complete_results(tmp_path)
    assert best_hyperparameters(results) == results.tune.best_hyperparameters
    results.tune = None
    assert best_hyperparameters(results) == PAPER_BEST


def test_the_report_says_in_one_line_which_sections_were_switched_off(tmp_path) -> None:
    results = complete_results(tmp_path)
    results.train = results.tune = results.kfold = results.labels = None
    results.evaluate.mcnemar = []
    results.evaluate.comparisons = [c for c in results.evaluate.comparisons if c.topic == "paper"]
    stages = [f for f in results.run.stages if f.name not in ("train", "tune", "kfold", "labels")]
    stages += [StageFact(name, "off", 0.0, 0) for name in ("train", "tune", "kfold", "labels")]
    results.run = dataclasses.replace(results.run, stages=stages)
    markdown = render_markdown(results, {})
    assert markdown.count("*Switched off in this run's config") == 5  # architectures, trainings too
    assert "the paper\\'s own best hyperparameters" in markdown
    assert not any(f"the {name} stage has no results" in markdown for name in ("train", "tune", "kfold"))


def test_the_fast_profile_skips_the_papers_protocol_and_trains_the_candidates(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    config = load_config(profile="fast")
    names = ("train", "tune", "kfold", "labels", "final", "modern", "pretrained", "beyond", "choose",
             "export")
    off = {name: BY_NAME[name].off(config) for name in names}
    assert {name for name, why in off.items() if why} == {"train", "tune", "kfold", "labels", "pretrained"}
    assert "no mobilenet_v3_small weights at hand" in off["pretrained"]  # offline: one line, and on
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5").write_bytes(b"")
    assert BY_NAME["pretrained"].off(config) == ""  # Keras' cached download is at hand


def test_study_help_leads_new_users_to_the_fast_profile(capsys) -> None:
    from chimuf.cli import main

    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "--profile fast" in " ".join(capsys.readouterr().out.split())


def test_the_own_stage_is_off_without_a_builder() -> None:
    from chimuf.stages.specs import Setting
    from tests.own_builder import tiny

    config = load_config(profile="smoke")
    setting = Setting(Path("data"), Path("cache"), config.model_files)
    assert BY_NAME["own"].off_here(setting) == "no own architecture (candidates.builders)"
    assert BY_NAME["own"].off_here(dataclasses.replace(setting, builders={"tiny": tiny})) == ""
