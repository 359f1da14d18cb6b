"""Switching off the six trainings, the search and the k-fold: the config says so, the study's
specs skip them, the final model falls back to the paper's hyperparameters, the report says so in
one line per section."""

from __future__ import annotations

import dataclasses

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
