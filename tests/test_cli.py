"""The command line's edge: instant start, one-line errors, where the data comes from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chimuf.cli import main
from chimuf.core.config import load_config
from chimuf.core.errors import DataError
from chimuf.ml.tfstart import drop_noise
from chimuf.study import resolve_data_dir


def test_importing_the_cli_and_report_loads_no_tensorflow_or_matplotlib():
    code = ("import sys, chimuf.cli, chimuf.study, chimuf.report, chimuf.core.results; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_data_folder_is_one_line_with_the_way_to_get_data(tmp_path, capsys):
    code = main(["study", "--profile", "smoke", "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "does not exist" in err and "kagglehub" in err and "CHIMUF_DATA" in err


def test_bad_config_value_is_one_line(tmp_path, capsys):
    config = tmp_path / "study.toml"
    config.write_text("[train]\nepochs = -1\n")
    assert main(["config", "--config", str(config)]) == 2
    assert "`train.epochs` must be at least 1" in capsys.readouterr().err


def test_audit_of_a_folder_with_one_class_says_what_layout_is_expected(tmp_path, capsys):
    from tests.conftest import make_image

    make_image(tmp_path / "only" / "a.png")
    assert main(["audit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sub-folder" in err and str(tmp_path) in err


def test_data_folder_comes_from_flag_then_config_then_environment_then_project(tmp_path, monkeypatch):
    for name in ("flag", "config", "env", "project/data"):
        (tmp_path / name / "a").mkdir(parents=True)
    monkeypatch.setenv("CHIMUF_DATA", str(tmp_path / "env"))
    with_dir = load_config(overrides={"data": {"dir": str(tmp_path / "config")}})
    plain = load_config()
    project = tmp_path / "project"
    assert resolve_data_dir(str(tmp_path / "flag"), with_dir, project) == (tmp_path / "flag").resolve()
    assert resolve_data_dir(None, with_dir, project) == (tmp_path / "config").resolve()
    assert resolve_data_dir(None, plain, project) == (tmp_path / "env").resolve()
    monkeypatch.delenv("CHIMUF_DATA")
    assert resolve_data_dir(None, plain, project) == (project / "data").resolve()
    with pytest.raises(DataError, match="has no class sub-folders"):
        resolve_data_dir(str(tmp_path / "flag" / "a"), plain, project)


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "chimuf", "--help"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    for command in ("study", "audit", "report", "evaluate", "predict", "compare", "config", "tune-worker"):
        assert command in out.stdout


def test_chimuf_alone_prints_the_help_and_fails_as_an_incomplete_command(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "COMMAND" in captured.out and "compare" in captured.out and "study" in captured.out
    assert captured.err == ""


def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import errno

    import chimuf.study

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/train/model1.keras")

    (tmp_path / "data" / "a").mkdir(parents=True)
    monkeypatch.setattr(chimuf.study, "run_study", full)
    assert main(["study", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("error: No space left on device `runs/x/train/model1.keras`")


def test_tensorflow_starts_without_its_cpp_start_up_notes():
    code = ("from chimuf.ml.tfstart import quiet_tensorflow, start_tensorflow; "
            "quiet_tensorflow(); start_tensorflow(); import sys; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert out.stdout.strip() == "True"
    assert out.stderr == ""


def test_start_up_filter_drops_only_the_known_notes():
    notes = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795887742.120600   10328 port.cc:153] oneDNN custom operations are on.\n"
        "W0000 00:00:1795887742.120951   10328 cudart_stub.cc:31] Could not find cuda drivers\n"
        "E0000 00:00:1795887753.973037   10328 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
    )
    real = ("E0000 00:00:1795887753.973037   10328 bfc_allocator.cc:12] out of memory\n"
            "UserWarning: something the user should see\n")
    assert drop_noise(notes + real) == real
