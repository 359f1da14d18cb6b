"""The whole pipeline, end to end, on a small subset: the smoke study, its crash safety, that it
repeats itself to the last digit, and the Quarto project it publishes.

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
from chimuf.report.project import PROJECT_ENV
from tests.conftest import SHARED_DATA, make_dataset

pytestmark = [pytest.mark.slow, pytest.mark.smoke]


def smoke_data(tmp_root: Path) -> Path:
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    return make_dataset(tmp_root / "generated", per_class=50, size=64)


def study_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "chimuf", "study", "--profile", "smoke",
            "--data", str(data), "--out", str(out)]


def environment(cache: Path, project: Path | None = None) -> dict[str, str]:
    """The study's environment: its image cache, and where (if anywhere) its Quarto project goes."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["CHIMUF_CACHE_DIR"] = str(cache)
    env[PROJECT_ENV] = str(project) if project is not None else "none"
    return env


def run_study(data: Path, out: Path, cache: Path, timeout: float = 600,
              project: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(study_command(data, out), env=environment(cache, project), capture_output=True,
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


def comparable(run_dir: Path) -> dict:
    """results.json less what differs between two runs by design: wall times, speeds, time stamps,
    the run's own name and folder, its stages' history. Everything else, every number included, must
    repeat exactly."""
    # a saved model's digest varies too: a .keras file records when it was saved
    varying = {"wall_s", "images_per_s", "started_at", "updated_at", "run_id", "model_sha256"}

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in varying}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(run_dir), "RUN") if isinstance(value, str) else value

    results = strip(json.loads((run_dir / "results.json").read_text()))
    del results["run"]["stages"]  # done, or reused by the rerun test: how the numbers came, not what
    return results


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("smoke")
    data, out, cache = smoke_data(root), root / "run", root / "cache"
    started = time.monotonic()
    done = run_study(data, out, cache, project=root / "report")
    print(f"smoke study took {time.monotonic() - started:.0f} s")
    return data, out, cache, done


@pytest.fixture(scope="module")
def second_run(smoke_run) -> tuple[Path, subprocess.CompletedProcess]:
    """The same study again (same data, config, seed, lock, machine), into a run folder of its own."""
    data, first, cache, _done = smoke_run
    out = first.parent / "again"
    started = time.monotonic()
    done = run_study(data, out, cache, project=first.parent / "report")
    print(f"second smoke study took {time.monotonic() - started:.0f} s")
    return out, done


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
    tflite, int8 = export["exports"]  # the float file and, by default, an int8 copy (export.quantize)
    assert tflite["format"] == "tflite" and tflite["quantization"] == "" and (out / tflite["path"]).is_file()
    assert tflite["max_abs_difference"] <= 1e-4 and tflite["images_checked"] > 0
    assert int8["quantization"] == "int8" and (out / int8["path"]).is_file()
    assert int8["size_bytes"] < tflite["size_bytes"] and int8["test_accuracy"] == int8["test_accuracy"]
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


def test_smoke_study_publishes_its_quarto_project(smoke_run):
    _data, out, _cache, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    project = out.parent / "report"
    assert (project / ".run").read_text().strip() == str(out.resolve())
    assert "| Run | run |" in (project / "index.qmd").read_text()  # the run facts name the run
    for name in ("_quarto.yml", "include/head.html", "include/typst-header.typ", "index.html", "index.pdf"):
        assert (project / name).is_file(), name
    assert sorted(p.name for p in (project / "figures").iterdir()) == \
        sorted(p.name for p in (out / "report" / "figures").iterdir())


def test_second_study_with_the_same_seed_gives_identical_results(smoke_run, second_run):
    _data, first, _cache, done = smoke_run
    again, second = second_run
    assert done.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    assert "[train] done" in second.stderr  # trained afresh, nothing reused from the first run
    assert comparable(again) == comparable(first)


def test_second_study_swaps_the_quarto_project_whole(smoke_run, second_run):
    _data, first, _cache, _done = smoke_run
    again, second = second_run
    assert second.returncode == 0, second.stderr[-3000:]
    project = first.parent / "report"
    assert (project / ".run").read_text().strip() == str(again.resolve())
    assert "| Run | again |" in (project / "index.qmd").read_text()
    assert (project / "index.qmd").read_bytes() != (first / "report" / "index.qmd").read_bytes()
    assert sorted(p.name for p in (project / "figures").iterdir()) == \
        sorted(p.name for p in (again / "report" / "figures").iterdir())
    assert not [p for p in project.parent.iterdir() if p.name.startswith(".report.")]  # no staging left


def test_compare_finds_the_two_runs_identical(smoke_run, second_run):
    _data, first, _cache, _done = smoke_run
    again, _second = second_run
    done = subprocess.run([sys.executable, "-m", "chimuf", "compare", str(first), str(again), "--json"],
                          capture_output=True, text=True, check=True)
    comparison = json.loads(done.stdout)
    assert comparison["identical"], [s for s in comparison["sections"] if s["differences"]]
    assert {row["verdict"] for row in comparison["numbers"]} == {"identical"}


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
