"""Stages that declare themselves (chimuf.stages.specs): one list of inputs per stage, handed to the
stage as it is fingerprinted; provenance in every stage; the stopping rule said to the fit loop."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from chimuf.core import environment
from chimuf.core.config import ModelFilesConfig, ReportConfig, load_config
from chimuf.core.engine import Run, Upstream, fingerprinted
from chimuf.core.results import STAGES, Results, RunInfo
from chimuf.ml.training.fit import Stopping, StopState, watch
from chimuf.stages.specs import AUDIT, BY_NAME, SPECS, TRAINING_STAGES, Setting
from tests.conftest import make_dataset
from tests.test_engine import Count, quiet_console

ROOT = Path(__file__).resolve().parents[1]


console = quiet_console  # the engine tests' helpers: a Console writing to a string, a tiny outcome


def test_the_specs_are_the_study_s_stages_in_their_order():
    assert tuple(spec.name for spec in SPECS) == STAGES
    assert TRAINING_STAGES == ("train", "tune", "final", "kfold", "modern", "pretrained", "own")


def test_switches_say_why_a_stage_is_off():
    config = load_config(profile="smoke", overrides={"modern": {"enabled": False}})
    assert BY_NAME["modern"].off(config) == "modern.enabled = false"
    assert BY_NAME["pretrained"].off(config) == "pretrained.backbone is ''"
    assert BY_NAME["train"].off(config) == ""


def test_the_audit_is_fingerprinted_on_the_seed_only_when_the_seed_draws_a_sample(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2)
    setting = Setting(data, tmp_path / "cache", ModelFilesConfig())
    results = Results(2, RunInfo.unnamed())
    whole = [load_config(overrides={"seed": seed}) for seed in (1, 2)]
    assert fingerprinted(AUDIT.inputs(whole[0], results, setting)) == \
        fingerprinted(AUDIT.inputs(whole[1], results, setting))
    sampled = [load_config(profile="smoke", overrides={"seed": seed}) for seed in (1, 2)]
    assert fingerprinted(AUDIT.inputs(sampled[0], results, setting)) != \
        fingerprinted(AUDIT.inputs(sampled[1], results, setting))


def test_an_upstream_outcome_is_fingerprinted_by_its_digest_and_handed_over_whole(tmp_path):
    @dataclass
    class Outcome:
        rows: list[int]
        digest: str

    run = Run(tmp_path / "run", console()[0])
    handed = []
    outcome = Outcome(list(range(1000)), "d" * 64)
    run.stage("next", {"data": Upstream(outcome)}, Count, lambda ctx: Count(1))
    saved = json.loads((tmp_path / "run" / "stages" / "next.json").read_text())
    assert saved["inputs"] == {"data": "d" * 64}
    from chimuf.core.engine import unwrapped

    handed.append(unwrapped({"data": Upstream(outcome)})["data"])
    assert handed == [outcome]


def test_a_setting_that_changes_no_number_is_left_out_of_every_fingerprint():
    quick, patient = ReportConfig(timeout_s=10), ReportConfig(timeout_s=1000)
    assert fingerprinted({"report": quick}) == fingerprinted({"report": patient})
    assert fingerprinted({"report": ReportConfig(formats=("html",))}) != fingerprinted({"report": quick})


def test_a_stage_made_by_another_chimuf_version_is_redone_saying_which_versions(tmp_path):
    old = Run(tmp_path / "run", console()[0], {"chimuf": "0.1.0", "packages": "a" * 64})
    assert old.stage("train", {"epochs": 2}, Count, lambda ctx: Count(1)) == Count(1)
    out, stream = console()
    new = Run(tmp_path / "run", out, environment.provenance("b" * 64))
    assert new.stage("train", {"epochs": 2}, Count, lambda ctx: Count(2)) == Count(2)
    said = stream.getvalue()
    assert "[train] redone because" in said and "provenance.chimuf: \"0.1.0\" → \"0.2.0\"" in said
    assert "provenance.packages changed" in said
    again, stream = console()
    same = Run(tmp_path / "run", again, environment.provenance("b" * 64))
    assert same.stage("train", {"epochs": 2}, Count, lambda ctx: Count(3)) == Count(2)  # reused


def test_the_version_is_written_once_and_pyproject_reads_it():
    from chimuf.version import __version__

    assert __version__ == "0.2.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "dynamic = [\"version\"]" in pyproject and "\nversion = \"" not in pyproject


def test_the_commit_is_recorded_when_chimuf_runs_from_a_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    commit, dirty = environment.source_commit()
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert isinstance(dirty, bool)


def test_importing_the_study_loads_no_tensorflow():
    code = ("import sys, json, chimuf.study, chimuf.stages.specs\n"
            "print(json.dumps([m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(done.stdout) == []


# --- the stopping rule, said to the fit loop ------------------------------------------------------


def stopped_at(rule: Stopping, losses: list[float]) -> StopState:
    state = StopState()
    for epoch, loss in enumerate(losses, start=1):
        state = watch(state, epoch, loss, rule)
        if state.stopped:
            break
    return state


def test_a_fixed_rule_never_stops_and_keeps_the_last_epoch():
    state = stopped_at(Stopping.fixed(), [0.1, 0.9, 0.9, 0.9, 0.9])
    assert (state.stopped, state.best_epoch) == (False, 0)  # 0: no epoch watched, the last is kept


def test_the_best_of_all_rule_never_stops_and_keeps_the_lowest_loss():
    state = stopped_at(Stopping.best_of_all(), [0.5, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert (state.stopped, state.best_epoch) == (False, 2)


def test_the_early_rule_is_the_paper_s_from_the_config():
    rule = Stopping.of(load_config().train)
    assert rule == Stopping(5, 15, "best")
    assert stopped_at(Stopping.early(1, 0), [0.5, 0.6]).stopped


# --- the end-to-end case the hand-kept lists got wrong ---------------------------------------------


@pytest.mark.slow
def test_a_study_whose_models_need_a_raised_max_params_finishes_every_stage(tmp_path, monkeypatch):
    """Every stage opens its models within the study's model_files, not a default: here a default
    far below the models' size, which any stage falling back on it would refuse."""
    from chimuf.core.folders import StudyPaths
    from chimuf.ml.modelfiles import modelfile
    from chimuf.study import run_study

    monkeypatch.setattr(modelfile, "ModelFilesConfig", lambda: ModelFilesConfig(max_params=10))
    monkeypatch.setenv("CHIMUF_REPORT_PROJECT", "none")
    config = load_config(profile="smoke", overrides={"model_files": {"max_params": 2_000_000},
                                                     "kfold": {"folds": 2, "epochs": 1},
                                                     "tune": {"max_trials": 1, "epochs": 1},
                                                     "train": {"epochs": 1, "models": [3]},
                                                     "modern": {"epochs": 1}})
    config = replace(config, report=replace(config.report, formats=("html",)))
    data = make_dataset(tmp_path / "data", per_class=12, size=40)
    paths = StudyPaths(data, tmp_path / "run", tmp_path / "cache")
    results = run_study(config, paths, console()[0])
    assert results.beyond is not None and results.export is not None
    assert results.run.status == "finished"
