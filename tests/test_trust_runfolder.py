"""Run folders, configs and sidecars from someone else: everything they name is a regular file
inside the run, read with a size cap; links out of the run, FIFOs and devices are refused in one line
before anything is written or deleted; nothing they hold reaches the terminal raw."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from chimuf.cli import main
from tests.conftest import make_dataset
from tests.report_fixture import complete_results, write_run

# Every command here answers well within this (importing mlflow takes seconds on a loaded
# machine); a FIFO read would block for ever.
BOUND_S = 120.0


class Hung(Exception):
    pass


def within(seconds: float, call):
    """`call()`'s result, failing the test when it takes longer (a hang on a FIFO, say). SIGALRM
    interrupts even a blocking open() of a FIFO; chimuf's main() must run in the main thread."""
    def hung(signum, frame):
        raise Hung(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and fragment in lines[0], err
    return lines[0]


@pytest.fixture
def run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    write_run(run_dir, complete_results(run_dir))
    return run_dir


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def a_figure(run_dir: Path) -> Path:
    return run_dir / results_of(run_dir)["evaluate"]["confusion_figure"]["path"]


# --- chimuf report -----------------------------------------------------------------------------


def victim_folder(tmp_path: Path) -> Path:
    """Someone's folder, as a link in a shared run folder would aim at it."""
    victim = tmp_path / "victim"
    (victim / "figures").mkdir(parents=True)
    (victim / "figures" / "keep.png").write_bytes(b"mine")
    (victim / "index.qmd").write_text("my own document")
    return victim


def untouched(victim: Path) -> bool:
    return ((victim / "figures" / "keep.png").read_bytes() == b"mine"
            and (victim / "index.qmd").read_text() == "my own document"
            and sorted(p.name for p in victim.rglob("*")) == ["figures", "index.qmd", "keep.png"])


def test_a_report_folder_that_is_a_link_is_refused_before_anything_is_written(run, tmp_path, capsys):
    victim = victim_folder(tmp_path)
    (run / "report").symlink_to(victim)
    assert within(BOUND_S, lambda: main(["report", str(run)])) != 0
    one_line_error(capsys, "is a link")
    assert untouched(victim)


def test_a_figures_folder_that_is_a_link_is_refused_before_anything_is_deleted(run, tmp_path, capsys):
    victim = victim_folder(tmp_path)
    (run / "report").mkdir()
    (run / "report" / "figures").symlink_to(victim / "figures")
    assert within(BOUND_S, lambda: main(["report", str(run)])) != 0
    one_line_error(capsys, "is a link")
    assert untouched(victim)


def test_a_figure_that_is_a_fifo_is_refused_without_hanging(run, capsys):
    figure = a_figure(run)
    figure.unlink()
    os.mkfifo(figure)
    assert within(BOUND_S, lambda: main(["report", str(run)])) != 0
    one_line_error(capsys, "is a FIFO")


def test_a_sparse_figure_of_gigabytes_is_refused_unread(run, capsys):
    figure = a_figure(run)
    with figure.open("r+b") as file:
        file.truncate(3 * 2**30)  # sparse: no disk used, 3 GiB to whoever reads it
    assert within(BOUND_S, lambda: main(["report", str(run)])) != 0
    one_line_error(capsys, "is larger than the")
    assert not list((run / "report" / "figures").glob("*")) or all(
        p.stat().st_size < 2**26 for p in (run / "report" / "figures").iterdir())


@pytest.mark.parametrize("command", ["report", "compare", "track"])
def test_results_json_linked_to_dev_zero_is_one_line(run, capsys, command):
    (run / "results.json").unlink()
    (run / "results.json").symlink_to("/dev/zero")
    extra = {"compare": [str(run)], "track": ["--mlflow", f"file:{run.parent / 'mlruns'}"]}.get(command, [])
    assert within(BOUND_S, lambda: main([command, str(run), *extra])) != 0
    one_line_error(capsys, "leads outside")


def test_results_json_that_is_a_fifo_is_one_line(run, capsys):
    (run / "results.json").unlink()
    os.mkfifo(run / "results.json")
    assert within(BOUND_S, lambda: main(["compare", str(run), str(run)])) != 0
    one_line_error(capsys, "is a FIFO")


@pytest.mark.parametrize("command", ["report", "compare"])
def test_results_of_three_classes_are_one_line(run, capsys, command):
    data = results_of(run)
    data["evaluate"]["classes"] = ["a", "b", "c"]
    data["evaluate"]["confusion_matrix"] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    (run / "results.json").write_text(json.dumps(data))
    args = [command, str(run)] + ([str(run)] if command == "compare" else [])
    assert main(args) != 0
    one_line_error(capsys, "names 3 classes; a chimuf study has two")


def test_a_three_by_three_confusion_matrix_alone_is_one_line(run, capsys):
    data = results_of(run)
    data["evaluate"]["confusion_matrix"] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    (run / "results.json").write_text(json.dumps(data))
    assert main(["report", str(run)]) != 0
    one_line_error(capsys, "is not a 2 × 2 matrix")


# --- what reaches the terminal -------------------------------------------------------------------

HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\nfake line\u202eexe.png"


def test_compare_escapes_escape_codes_newlines_and_bidi_overrides(run, tmp_path, capsys):
    other = tmp_path / "other"
    data = results_of(run)
    data["run"]["run_id"] = HOSTILE
    data["run"]["config"]["data"]["positive_class"] = HOSTILE
    write_run(other, complete_results(other))
    (other / "results.json").write_text(json.dumps(data))
    assert main(["compare", str(run), str(other)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\nfake line" not in out
    assert "evil\\x1b[2J" in out and "\\u202e" in out


def test_audit_summary_escapes_hostile_file_names(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=3, size=40)
    (data / "muffin" / "muffin_000.png").rename(data / "muffin" / HOSTILE)
    (data / "muffin" / "not-an-image\x1b[31m.png").write_bytes(b"not an image")
    assert main(["audit", str(data)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\nfake line" not in out
    assert "not-an-image\\x1b[31m.png" in out


# --- chimuf track --------------------------------------------------------------------------------


@pytest.fixture
def exported_run(run) -> Path:
    (run / "export").mkdir()
    (run / "export" / "final.classes.json").write_text('{"classes": ["a", "b"]}')
    return run


def tracker(tmp_path: Path):
    from chimuf.core.config import TrackingConfig

    return TrackingConfig(mlflow_uri=f"file:{tmp_path / 'mlruns'}", mlflow_experiment="trust")


def stored_files(tmp_path: Path) -> list[str]:
    store = tmp_path / "mlruns"
    return [p.name for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.mark.parametrize("target", ["outside", "/dev/zero"])
def test_track_refuses_links_out_of_the_run_and_logs_nothing(exported_run, tmp_path, capsys, target):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (exported_run / "export" / "stolen").symlink_to(secret if target == "outside" else target)
    store = f"file:{tmp_path / 'mlruns'}"
    status = within(BOUND_S, lambda: main(["track", str(exported_run), "--mlflow", store]))
    assert status != 0
    err = capsys.readouterr().err
    assert "leads outside" in err and "Traceback" not in err
    assert "stolen" not in stored_files(tmp_path)
    assert not any("PRIVATE KEY" in p.read_text(errors="replace")
                   for p in (tmp_path / "mlruns").rglob("*") if p.is_file() and p.stat().st_size < 2**20)


def test_track_refuses_a_fifo_in_the_run(exported_run, tmp_path, capsys):
    os.mkfifo(exported_run / "export" / "pipe")
    store = f"file:{tmp_path / 'mlruns'}"
    status = within(BOUND_S, lambda: main(["track", str(exported_run), "--mlflow", store]))
    assert status != 0
    assert "not a regular file" in capsys.readouterr().err


def test_a_half_logged_mlflow_run_is_logged_again_on_retry(exported_run, tmp_path, monkeypatch):
    import io

    import mlflow

    from chimuf.core.console import Console
    from chimuf.report import read_results
    from chimuf.tools import tracking

    cfg, console = tracker(tmp_path), Console(stream=io.StringIO(), live=False)
    real = mlflow.tracking.MlflowClient.log_artifact

    def cut_off(self, *args, **kwargs):
        raise OSError("connection lost")

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_artifact", cut_off)
    assert tracking.log_run(read_results(exported_run), exported_run, cfg, console) is None
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_artifact", real)
    run_id = tracking.log_run(read_results(exported_run), exported_run, cfg, console)
    assert run_id is not None
    assert "logged only in part; logging it again" in console.stream.getvalue()
    with tracking.mlflow_calls(cfg.mlflow_uri):
        client = mlflow.tracking.MlflowClient(cfg.mlflow_uri)
        experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
        live = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in live] == [run_id]
        assert live[0].data.tags[tracking.LOGGED_TAG] == "true"
        assert "model" in {a.path for a in client.list_artifacts(run_id)}
    assert tracking.log_run(read_results(exported_run), exported_run, cfg, console) == run_id
    assert "logged already" in console.stream.getvalue()


# --- sidecars and configs ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_classes_sidecar_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    from chimuf.core.errors import ModelError
    from chimuf.ml.modelfiles import modelfile

    model = tmp_path / "m.keras"
    sidecar = modelfile.classes_path(model)
    if kind == "fifo":
        os.mkfifo(sidecar)
    else:
        sidecar.symlink_to("/dev/zero")
    with pytest.raises(ModelError, match=r"a FIFO|a device"):
        within(BOUND_S, lambda: modelfile.read_sidecar(model))


def test_a_config_that_is_a_fifo_or_dev_zero_is_one_line(tmp_path, capsys):
    fifo = tmp_path / "study.toml"
    os.mkfifo(fifo)
    assert within(BOUND_S, lambda: main(["config", "--config", str(fifo)])) != 0
    one_line_error(capsys, "is a FIFO")
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    assert within(BOUND_S, lambda: main(["config", "--config", str(zero)])) != 0


@pytest.mark.parametrize("toml, fragment", [
    ("[train]\nlearning_rate = 1e999\n", "the number 1e999 is beyond the largest a float holds"),
    ("seed = 1e999\n", "the number 1e999"),
    ("[train]\nepochs = " + "7" * 5000 + "\n", "digits"),
    ("[train]\nepochs = 1000000000\n", "`train.epochs` must be a whole number from 1 to 10,000"),
    ("[tune]\nepochs = 100000\n", "`tune.epochs` must be a whole number from 1 to 10,000"),
    ("[train]\nlearning_rate = 5.0\n", "`train.learning_rate` must be above 0 and at most 1"),
    ("[modern]\nlearning_rate = 1e6\n", "`modern.learning_rate` must be above 0 and at most 1"),
])
def test_config_numbers_out_of_reason_are_one_line(tmp_path, capsys, toml, fragment):
    path = tmp_path / "study.toml"
    path.write_text(toml)
    assert main(["config", "--config", str(path)]) != 0
    line = one_line_error(capsys, fragment)
    assert " inf" not in line


def test_memory_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    from chimuf import cli

    def greedy(args, console):
        raise MemoryError

    monkeypatch.setitem(cli.COMMANDS, "config", greedy)
    assert main(["config"]) != 0
    one_line_error(capsys, "out of memory")
