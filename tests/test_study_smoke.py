"""The whole pipeline, end to end, on a small subset: the smoke study, and its crash safety.

These run `chimuf study --profile smoke` in a subprocess, exactly as a user would, on the real
photos when ../shared/data is present and on generated images otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chimuf.core.results import SCHEMA_VERSION
from tests.conftest import SHARED_DATA, make_dataset

pytestmark = [pytest.mark.slow, pytest.mark.smoke]


def smoke_data(tmp_root: Path) -> Path:
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    return make_dataset(tmp_root / "generated", per_class=50, size=64)


def study_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "chimuf", "study", "--profile", "smoke",
            "--data", str(data), "--out", str(out)]


def environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["CHIMUF_CACHE_DIR"] = str(cache)
    return env


def run_study(data: Path, out: Path, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(study_command(data, out), env=environment(cache), capture_output=True,
                          text=True, timeout=timeout, check=False)


def headline(run_dir: Path) -> dict:
    """The numbers that must not change between an uninterrupted and a resumed run."""
    results = json.loads((run_dir / "results.json").read_text())

    def curves(history: list[dict]) -> list[dict]:  # timings differ between runs, nothing else
        return [{k: v for k, v in epoch.items() if k not in ("wall_s", "images_per_s")} for epoch in history]

    return {
        "split": results["split"]["digest"],
        "train": [(t["name"], t["epochs_run"], curves(t["history"])) for t in results["train"]["trainings"]],
        "tune": [(t["hyperparameters"], t["score"], curves(t["history"])) for t in results["tune"]["trials"]],
        "best": results["tune"]["best_hyperparameters"],
        "final": curves(results["final"]["history"]),
        "accuracy": results["evaluate"]["accuracy"],
        "auc": results["evaluate"]["roc_auc"],
        "folds": [(f["accuracy"], f["loss"]) for f in results["kfold"]["folds"]],
        "mistakes": [m["path"] for m in results["explain"]["misclassified"]],
        "out_of_fold": results["kfold"]["predictions"],
        "suspects": [s["path"] for s in results["labels"]["suspects"]],
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("smoke")
    data, out, cache = smoke_data(root), root / "run", root / "cache"
    started = time.monotonic()
    done = run_study(data, out, cache)
    print(f"smoke study took {time.monotonic() - started:.0f} s")
    return data, out, cache, done


def test_smoke_study_runs_every_stage_and_renders_the_report(smoke_run):
    _data, out, _cache, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "finished"
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == SCHEMA_VERSION  # 2 since the typed hand-offs
    for stage in ("audit", "split", "cache", "train", "tune", "final", "evaluate", "kfold", "labels",
                  "explain"):
        assert results[stage] is not None, f"stage {stage} missing from results.json"
    assert len(results["train"]["trainings"]) == 6
    assert len(results["kfold"]["folds"]) == 2
    html = next((out / "report").glob("*.html"))
    pdf = next((out / "report").glob("*.pdf"))
    assert html.stat().st_size > 10_000 and pdf.read_bytes().startswith(b"%PDF")
    assert "test accuracy" in done.stderr and "HTML report" in done.stderr


def test_smoke_study_leaves_tensorboard_logs_and_a_checked_tflite_model(smoke_run):
    _data, out, _cache, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("train/model1", "train/model3_aug", "final/final", "kfold/fold1", "tune/trial_0"):
        for part in ("train", "validation"):
            assert list((out / "tensorboard" / name / part).glob("events.out.tfevents.*")), (name, part)
    assert list((out / "tensorboard" / "tune").glob("events.out.tfevents.*"))  # the HParams view
    export = json.loads((out / "results.json").read_text())["export"]
    (tflite,) = export["exports"]
    assert tflite["format"] == "tflite" and (out / tflite["path"]).is_file()
    assert tflite["max_abs_difference"] <= 1e-4 and tflite["images_checked"] > 0
    sidecar = json.loads((out / export["sidecar_path"]).read_text())
    assert sidecar["threshold"] == export["threshold"] and sidecar["threshold_rule"]


def test_small_folder_study_says_first_that_its_models_are_not_distinguishable_from_chance(smoke_run):
    """50 real photos per class at 32 px and two epochs teach the models nothing: the console,
    right after the split and in the headline, and the report's first page and conclusion say so
    before anything else, and claim no improvement."""
    if not SHARED_DATA.is_dir():
        pytest.skip("generated images are easy to learn; the claim is about a small folder of real photos")
    _data, out, _cache, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["evaluate"]["chance"]["better_than_chance"] is False
    assert "warning: the validation split has 10 images" in done.stderr  # after the split
    summary = done.stderr[done.stderr.rindex("[report] done"):].splitlines()
    assert next(line for line in summary[1:] if line.strip()).startswith("NOT distinguishable from chance")
    markdown = (out / "report" / "index.qmd").read_text(encoding="utf-8")
    glance = markdown[markdown.index("abstract: |"):markdown.index("# Introduction")]
    assert "**The final model is not distinguishable from chance\\.**" in glance
    conclusion = markdown[markdown.index("# Conclusion"):markdown.index("# Run facts")]
    first = conclusion.split("\n\n")[1]
    assert first.startswith("**The final model is not distinguishable from chance\\.**")
    assert not [word for word in ("helped", "improved", "ahead of") if word in conclusion]
    assert (out / "kfold" / "oof_predictions.csv").is_file()
    assert (out / results["labels"]["suspects_csv"]).is_file()


def test_rerun_of_a_finished_study_redoes_nothing(smoke_run):
    data, out, cache, first = smoke_run
    assert first.returncode == 0, first.stderr[-3000:]
    before = headline(out)
    again = run_study(data, out, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reused") >= 9
    assert "[train] running" not in again.stderr
    assert headline(out) == before


def wait_for_stage(process: subprocess.Popen, run_dir: Path, stage: str, timeout: float) -> bool:
    """Wait until the run reports `stage` as its current stage (and a little work is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            state = json.loads((run_dir / "run.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        if state.get("current_stage") == stage:
            return True
        time.sleep(0.2)
    return False


def test_killed_study_resumes_to_the_same_results(smoke_run, tmp_path):
    """SIGKILL during the trainings, the tuning, a fold and the report; each rerun resumes."""
    data, reference, cache, first = smoke_run
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "run"
    for stage, delay in (("train", 6.0), ("tune", 4.0), ("kfold", 3.0), ("report", 1.0)):
        process = subprocess.Popen(study_command(data, out), env=environment(cache),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = wait_for_stage(process, out, stage, timeout=400)
        if reached:
            time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        state = json.loads((out / "run.json").read_text())
        assert state["status"] != "finished" or not reached
    done = run_study(data, out, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "was killed" in done.stderr or "reused" in done.stderr
    assert headline(out) == headline(reference)


def test_sigterm_marks_the_run_interrupted(smoke_run, tmp_path):
    data, _reference, cache, _first = smoke_run
    out = tmp_path / "run"
    process = subprocess.Popen(study_command(data, out), env=environment(cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for_stage(process, out, "train", timeout=300)
    # Signal as soon as a first epoch is saved: the smoke trainings take seconds in all.
    deadline = time.monotonic() + 120
    while not any((out / "train").rglob("state.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "rerun the same command to resume" in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
