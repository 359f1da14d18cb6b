"""The study's plan and clock: how long it should take, before it starts and as it runs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from chimuf.core.plan import Plan, StudyClock, Work, training_epochs, trial_epochs


def two_trainings() -> Plan:
    return Plan(stages=["train", "tune", "report"],
                work=[Work("train", "a", 10, 5, 20, 2.0), Work("train", "b", 10, 5, 20, 3.0)],
                fixed={"report": 7.0})


def test_plan_adds_up_every_unit_and_the_fixed_stages_and_says_its_range():
    plan = two_trainings()
    assert plan.total_s() == 10 * 2 + 10 * 3 + 7
    assert plan.range_s() == (5 * 2 + 5 * 3 + 7, 20 * 2 + 20 * 3 + 7)
    lines = plan.lines()
    assert "train" in lines[1] and "2 x up to  20 epochs" in lines[1]
    assert "expected about 57s" in lines[-1]


def test_clock_counts_what_is_left_at_the_measured_pace():
    clock = StudyClock(two_trainings())
    first = clock.eta("train", "a")
    # a's first epoch took 4 s where the plan said 2: this run is twice as slow as planned
    said = first(1, 20, 4.0)
    # left: a's 9 planned epochs at 4 s, b's 10 epochs × 3 s × 2, the report's 7 s: 103 s;
    # at least a's 4 more and b's 5 (16 + 30 + 7 s), at most a's 19 more and b's 20 (76 + 120 + 7 s)
    assert said == "study ETA 1m43s (53s-3m23s)"


def test_clock_range_narrows_as_units_finish_and_closes_at_the_end():
    clock = StudyClock(two_trainings())
    widths, contains = [], []
    for name, epochs in (("a", 8), ("b", 20)):  # a stops early, b runs to its maximum
        after = clock.eta("train", name)
        for epoch in range(1, epochs + 1):
            said = after(epoch, 20, 2.5)
            low, high = (seconds(part) for part in said.split("(")[1].rstrip(")").split("-"))
            widths.append(high - low)
            contains.append(low <= seconds(said.split()[2]) <= high)
    assert all(contains)
    assert all(later <= before + 1 for before, later in itertools.pairwise(widths))  # 1 s: rounding
    assert widths[-1] == 0 and widths[0] > 60  # b at its most epochs: nothing left to decide


def seconds(text: str) -> float:
    """"1h2m3s", "4m", "53s" → seconds (chimuf.core.console.format_seconds's forms)."""
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
    return total


def test_early_stopping_and_pruning_rules_bound_the_epochs():
    assert training_epochs(50, 15, 5) == (23.5, 21, 50)
    assert training_epochs(8, 4, 2) == (8.0, 7, 8)  # the estimate never passes the maximum
    assert trial_epochs(0, 50, 15, 5, prune_after=5) == (23.5, 21, 50)  # the first trials run on
    assert trial_epochs(5, 50, 15, 5, prune_after=5) == ((23.5 + 6) / 2, 6, 50)
    assert trial_epochs(5, 50, 15, 5, prune_after=None) == (23.5, 21, 50)


@pytest.mark.slow
def test_plan_only_prints_the_plan_and_stops_after_the_split(tmp_path, capsys, monkeypatch):
    """... and its probe starts only once oneDNN's own probe (a TensorFlow process a first run on a
    machine starts in the background: a fresh cache folder here) has answered."""
    from chimuf import study
    from chimuf.cli import main
    from tests.conftest import make_dataset

    said: list[str] = []
    asked, planned = study.machine.onednn_isa, study.plan.plan_study
    monkeypatch.setattr(study.machine, "onednn_isa", lambda target, wait_s=0.0: (
        said.append(f"oneDNN waited {wait_s:g} s") if wait_s else None, asked(target, wait_s))[1])
    monkeypatch.setattr(study.plan, "plan_study", lambda *a, **k: (said.append("plan"), planned(*a, **k))[1])

    data = make_dataset(tmp_path / "data", per_class=12, size=24)
    config = tmp_path / "tiny.toml"
    config.write_text('profile = "smoke"\n[data]\nimage_size = 16\nmax_per_class = 0\n'
                      f'cache_dir = "{tmp_path / "cache"}"\n[audit]\nmin_side = 8\n')
    assert main(["study", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--plan"]) == 0
    err = capsys.readouterr().err
    assert "plan (times from a probe" in err and "expected about" in err
    for stage in ("train", "tune", "final", "kfold", "modern"):
        assert f"  {stage} " in err
    assert not (tmp_path / "run" / "stages" / "cache.json").exists()  # nothing past the split
    assert '"status": "stopped"' in (tmp_path / "run" / "run.json").read_text()
    assert said[:2] == [f"oneDNN waited {study.ONEDNN_WAIT_S:g} s", "plan"]


def test_a_resumed_plan_leaves_out_and_does_not_probe_the_finished_stages(monkeypatch):
    """A rerun after the k-fold has only the modern recipe left: its plan and its clock say so,
    and no time goes to probing models that will not train again."""
    from types import SimpleNamespace

    from chimuf.core.config import load_config
    from chimuf.stages import plan as plan_stage

    probed: list[str] = []
    from chimuf.ml.training.probe import Pace

    pace = Pace(train_images_per_s=1e3, infer_images_per_s=1e3)
    monkeypatch.setattr(plan_stage, "probe", lambda model, *args, **kwargs: probed.append(model.name) or pace)
    config = load_config(profile="smoke")
    split = SimpleNamespace(train=[0] * 40, validation=[0] * 10, test=[0] * 10)

    fresh = plan_stage.plan_study(config, split)
    assert {w.stage for w in fresh.work} == {"train", "tune", "final", "kfold", "modern"}
    probed.clear()
    finished = ["cache", "train", "tune", "final", "evaluate", "kfold"]
    resumed = plan_stage.plan_study(config, split, done=finished)
    assert {w.stage for w in resumed.work} == {"modern"} and probed == ["modern"]
    assert "cache" not in resumed.fixed and "report" in resumed.fixed
    assert resumed.total_s() < fresh.total_s()
    assert resumed.lines()[-1].endswith("finished before, not planned again: " + ", ".join(finished))


def test_tuned_trials_are_planned_at_the_mean_pace_over_the_search_space(monkeypatch):
    """Timed at the middle of the space alone, the trials were planned at 20 s an epoch in the
    paper run while they ran 14-34 s: the plan now times small, middle and large points."""
    from types import SimpleNamespace

    from chimuf.core.config import load_config
    from chimuf.ml.training.probe import Pace
    from chimuf.stages import plan as plan_stage

    def built(architecture, size, hyperparameters, precision):
        return SimpleNamespace(name=architecture, hyperparameters=hyperparameters)

    def paced(model, *args, **kwargs):  # an epoch's cost grows with the square of the widths
        width = model.hyperparameters["conv1_filters"] if model.hyperparameters else 16
        return Pace(train_images_per_s=1e4 / width**2, infer_images_per_s=1e9)

    monkeypatch.setattr(plan_stage, "build_model", built)
    monkeypatch.setattr(plan_stage, "compile_model", lambda model, rate: None)
    monkeypatch.setattr(plan_stage, "probe", paced)
    config = load_config(profile="paper")
    config = replace(config, modern=replace(config.modern, enabled=False))
    split = SimpleNamespace(train=[0] * 100, validation=[0] * 10, test=[0] * 10)
    made = plan_stage.plan_study(config, split)

    widths = [p["conv1_filters"] for p in plan_stage.space_points(config)]
    assert widths[0] < widths[1] < widths[-1]  # small, middle, large
    per_width = [100 * w**2 / 1e4 for w in widths]  # training seconds an epoch at each point
    trial = next(w for w in made.work if w.stage == "tune")
    assert trial.epoch_s == pytest.approx(sum(per_width) / 3 + 10 / 1e9 + 1.0)
    assert len(set(per_width)) == 3 and trial.epoch_s != pytest.approx(per_width[1] + 1.0)
    assert "three points of its search space" in " ".join(made.notes)


def test_the_pretrained_baseline_is_planned_and_timed_without_its_weights(monkeypatch):
    """The plan and the clock count the pretrained stage (both its phases), timed on the backbone
    with random weights: no download, no weights file needed to plan."""
    from types import SimpleNamespace

    from chimuf.core.config import load_config
    from chimuf.ml.training.probe import Pace
    from chimuf.stages import plan as plan_stage

    probed: list[str] = []
    pace = Pace(train_images_per_s=1e3, infer_images_per_s=1e3)
    monkeypatch.setattr(plan_stage, "probe", lambda model, *args, **kwargs: probed.append(model.name) or pace)
    config = load_config(profile="smoke", overrides={"pretrained": {"backbone": "mobilenet_v3_small",
                                                                    "epochs": 3, "fine_tune_epochs": 2}})
    split = SimpleNamespace(train=[0] * 40, validation=[0] * 10, test=[0] * 10)
    made = plan_stage.plan_study(config, split, done=["train", "tune", "final", "kfold", "modern"])
    assert [(w.stage, w.name, w.epochs) for w in made.work] == [("pretrained", "pretrained_head", 3),
                                                                ("pretrained", "pretrained", 2)]
    assert probed == ["pretrained_mobilenet_v3_small"]


def test_the_plan_knows_how_many_units_a_pool_runs_at_once_and_which_units_learn_from_each_other(
        monkeypatch):
    """The trainings and the folds run in a pool: the plan schedules them on its workers as the pool
    will (its own rule on this machine's cores), and marks the units early stopping ends alike."""
    from types import SimpleNamespace

    from chimuf.core.config import load_config
    from chimuf.ml.training.probe import Pace
    from chimuf.stages import plan as plan_stage

    pace = Pace(train_images_per_s=1e3, infer_images_per_s=1e3)
    monkeypatch.setattr(plan_stage, "probe", lambda model, *args, **kwargs: pace)
    monkeypatch.setattr(plan_stage, "local_gpus", lambda: [])
    monkeypatch.setattr(plan_stage, "machine_cores", lambda: 2)
    config = load_config(profile="smoke", overrides={"train": {"workers": 0, "threads_per_unit": 1},
                                                     "kfold": {"early_stopping": True}})
    split = SimpleNamespace(train=[0] * 40, validation=[0] * 10, test=[0] * 10)
    made = plan_stage.plan_study(config, split)
    assert made.slots == {"train": 2, "kfold": 2}
    kinds = {w.stage: w.family for w in made.work}
    assert kinds == {"train": "training", "final": "training", "kfold": "training", "tune": "tune",
                     "modern": "modern"}
    alone = plan_stage.plan_study(replace(config, train=replace(config.train, threads_per_unit=2)), split)
    assert alone.slots == {"train": 1, "kfold": 1} and alone.total_s() > made.total_s()
