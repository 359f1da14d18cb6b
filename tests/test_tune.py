"""The hyperparameter search: its space, resuming, and failed trials."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest

from chimuf.core.config import AuditConfig, AugmentConfig, SplitConfig, TrainConfig, TuneConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import Interrupted, StageError
from chimuf.core.hyperparameters import COUNT_NAMES
from chimuf.stages import tune
from chimuf.tuning import space as tuning_space

SIZE = 16
TINY_SPACE = {"conv1_filters": (2, 4, 2), "conv2_filters": (2, 4, 2), "conv3_filters": (2, 4, 2),
              "dense_units": (4, 8, 4), "dropout_conv": (0.0, 0.2, 0.1), "dropout_dense": (0.0, 0.2, 0.1)}
TRAIN = TrainConfig(batch_size=8, patience=1, start_from_epoch=0, precision="float32", learning_rate=3e-3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset
    from tests.conftest import make_dataset

    root = tmp_path_factory.mktemp("tune")
    data = make_dataset(root / "data", per_class=10)
    audit = audit_folder(data, AuditConfig(), Console(stream=io.StringIO(), live=False))
    split = split_dataset(audit, SplitConfig(), seed=0)
    cache = build_cache(audit, data, SIZE, root / "cache", Console(stream=io.StringIO(), live=False))
    return cache, split


def context(run_dir: Path) -> tuple[StageContext, io.StringIO]:
    stream = io.StringIO()
    ctx = StageContext("tune", run_dir / "tune", run_dir, Console(stream=stream, live=False))
    ctx.dir.mkdir(parents=True, exist_ok=True)
    return ctx, stream


def search(ctx: StageContext, tiny_data, max_trials: int):
    cache, split = tiny_data
    cfg = TuneConfig(max_trials=max_trials, epochs=1, **TINY_SPACE)
    return tune.run_tuning(ctx, cache, split, cfg, TRAIN, AugmentConfig(), seed=5)


def trial_lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip().startswith("trial ")]


def test_search_space_contains_the_papers_best_hyperparameters():
    space = {d.name: d.values for d in tuning_space.search_space(TuneConfig())}
    paper_best = {"conv1_filters": 16, "conv2_filters": 96, "conv3_filters": 192, "dense_units": 96,
                  "dropout_conv": 0.05, "dropout_dense": 0.4}
    for name, value in paper_best.items():
        assert value in space[name], f"{name} = {value} is outside the search space {space[name]}"
    assert space["conv1_filters"] == [16, 32, 48, 64]
    assert space["dropout_conv"][:4] == [0.0, 0.05, 0.1, 0.15]  # plain decimals, no 0.15000000000000002
    assert space["dropout_conv"][-1] == 0.5  # the maximum is included


def test_the_tuner_can_propose_every_listed_value_and_no_other():
    import keras_tuner as kt

    hp = kt.HyperParameters()
    tuning_space.declare_space(hp, TuneConfig())
    listed = {d.name: d.values for d in tuning_space.search_space(TuneConfig())}
    for dimension in hp.space:
        proposed = sorted({dimension.random_sample(seed) for seed in range(400)})
        assert proposed == listed[dimension.name], dimension.name


def test_one_trial_then_two_runs_only_the_missing_trial(tiny_data, tmp_path):
    ctx, first_stream = context(tmp_path / "run")
    first = search(ctx, tiny_data, max_trials=1)
    assert [t.status for t in first.trials] == ["COMPLETED"]
    assert len(trial_lines(first_stream)) == 1
    saved_history = (ctx.dir / "trials" / f"trial_{first.trials[0].trial_id}.json").read_bytes()

    again, second_stream = context(tmp_path / "run")
    second = search(again, tiny_data, max_trials=2)
    assert len(second.trials) == 2
    assert len(trial_lines(second_stream)) == 1  # only the new trial ran
    assert "1 of 2 trials already done" in second_stream.getvalue()
    assert second.trials[0].hyperparameters == first.trials[0].hyperparameters
    assert second.trials[0].score == first.trials[0].score
    assert (ctx.dir / "trials" / f"trial_{first.trials[0].trial_id}.json").read_bytes() == saved_history


def test_trials_carry_history_and_best_values_are_plain_numbers(tiny_data, tmp_path):
    ctx, _ = context(tmp_path / "run")
    outcome = search(ctx, tiny_data, max_trials=1)
    (trial,) = outcome.trials
    assert trial.epochs == len(trial.history) == 1
    assert trial.history[0].val_accuracy == pytest.approx(trial.score)
    assert outcome.best_score == trial.score
    for figure in (outcome.progress_figure, outcome.hyperparameter_figure):  # named by role
        assert (ctx.run_dir / figure.path).read_bytes().startswith(b"\x89PNG")
    assert set(outcome.best_hyperparameters) == set(TINY_SPACE)
    for name, value in outcome.best_hyperparameters.items():
        assert type(value) is (int if name in COUNT_NAMES else float)
    assert outcome.objective == "val_accuracy"


def test_failed_trial_is_recorded_and_the_search_goes_on(tiny_data, tmp_path, monkeypatch):
    calls = []
    real_fit = tune.fit_trial

    def fail_first(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("out of memory, pretend")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(tune, "fit_trial", fail_first)
    ctx, stream = context(tmp_path / "run")
    outcome = search(ctx, tiny_data, max_trials=2)
    assert [t.status for t in outcome.trials] == ["FAILED", "COMPLETED"]
    assert "out of memory, pretend" in outcome.trials[0].error
    assert outcome.trials[0].score is None
    assert outcome.best_hyperparameters == outcome.trials[1].hyperparameters
    assert "failed" in trial_lines(stream)[0]


def test_every_trial_failing_stops_the_stage_with_the_error(tiny_data, tmp_path, monkeypatch):
    def always_fail(model, *args, **kwargs):
        raise ValueError("broken data, pretend")

    monkeypatch.setattr(tune, "fit_trial", always_fail)
    ctx, _ = context(tmp_path / "run")
    with pytest.raises(StageError, match="broken data, pretend"):
        search(ctx, tiny_data, max_trials=tune.MAX_CONSECUTIVE_FAILURES)


def test_a_stop_signal_ends_the_search_instead_of_failing_a_trial(tiny_data, tmp_path, monkeypatch):
    def stopped(model, *args, **kwargs):
        raise Interrupted("stopped by SIGTERM")

    monkeypatch.setattr(tune, "fit_trial", stopped)
    ctx, stream = context(tmp_path / "run")
    with pytest.raises(Interrupted):
        search(ctx, tiny_data, max_trials=2)
    assert trial_lines(stream) == []


@pytest.mark.slow
def test_search_stopped_mid_trial_resumes_to_the_same_trials_as_an_unbroken_one(tiny_data, tmp_path,
                                                                                 monkeypatch):
    unbroken_ctx, _ = context(tmp_path / "unbroken")
    unbroken = search(unbroken_ctx, tiny_data, max_trials=2)

    real_fit = tune.fit_trial
    calls = []

    def stop_in_second_trial(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted("stopped by SIGTERM")
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(tune, "fit_trial", stop_in_second_trial)
    ctx, _ = context(tmp_path / "broken")
    with pytest.raises(Interrupted):
        search(ctx, tiny_data, max_trials=2)
    monkeypatch.setattr(tune, "fit_trial", real_fit)
    resumed_ctx, _ = context(tmp_path / "broken")
    resumed = search(resumed_ctx, tiny_data, max_trials=2)
    assert [(t.trial_id, t.status, t.hyperparameters, t.score) for t in resumed.trials] == [
        (t.trial_id, t.status, t.hyperparameters, t.score) for t in unbroken.trials]
    assert resumed.best_hyperparameters == unbroken.best_hyperparameters


# --- pruning -----------------------------------------------------------------------------------


def epochs_of(*val_accuracies: float) -> list:
    from chimuf.core.results import EpochRecord

    return [EpochRecord(e, 0.5, 0.5, 0.5, v) for e, v in enumerate(val_accuracies, start=1)]


def test_median_stopping_stops_a_trial_below_the_finished_trials_median_after_the_grace():
    from chimuf.tuning.pruning import MedianStopping

    rule = MedianStopping(grace_epochs=2)
    finished = [epochs_of(0.6, 0.7, 0.8, 0.8), epochs_of(0.5, 0.6, 0.7), epochs_of(0.7, 0.8, 0.9)]
    assert not rule.should_stop(epochs_of(0.1, 0.1), finished)  # still in its grace epochs
    assert rule.should_stop(epochs_of(0.1, 0.1, 0.6), finished)  # 0.6 < median(0.8, 0.7, 0.9)
    assert not rule.should_stop(epochs_of(0.1, 0.1, 0.8), finished)  # at the median: goes on
    assert not rule.should_stop(epochs_of(0.1, 0.1, 0.1, 0.1), finished[:1])  # one trial is no median


def test_epochs_saved_lies_between_early_stoppings_first_chance_and_the_budget():
    from chimuf.tuning.pruning import epochs_saved

    assert epochs_saved([6, 10], max_epochs=50, earliest_stop=21) == (15 + 11, 44 + 40)
    assert epochs_saved([], max_epochs=50, earliest_stop=21) == (0, 0)


def test_a_pruned_trial_stops_where_the_rule_says_and_is_recorded(tiny_data, tmp_path, monkeypatch):
    from chimuf.tuning.pruning import MedianStopping

    monkeypatch.setattr(MedianStopping, "should_stop",
                        lambda self, history, completed: len(history) == 2 and bool(completed))
    ctx, stream = context(tmp_path / "run")
    cache, split = tiny_data
    cfg = TuneConfig(max_trials=2, epochs=3, prune_after=1, **TINY_SPACE)
    outcome = tune.run_tuning(ctx, cache, split, cfg, replace(TRAIN, patience=5), AugmentConfig(), seed=5)
    first, second = outcome.trials
    assert (first.pruned, first.epochs) == (False, 3)  # nothing finished yet: no median to compare
    assert (second.pruned, second.epochs) == (True, 2)
    assert outcome.pruning == "median stopping rule after 1 epochs" and outcome.epochs_saved == [1, 1]
    assert "pruned: below the median" in stream.getvalue()
    assert "epoch 2/3 of trial 2/2" in stream.getvalue()
