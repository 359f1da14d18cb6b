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
from chimuf.core.folders import resolve_data_dir
from chimuf.ml.tfstart import drop_noise


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
    assert "`train.epochs` must be a whole number from 1 to 10,000" in capsys.readouterr().err


def test_audit_of_a_folder_with_one_class_says_what_layout_is_expected(tmp_path, capsys):
    from tests.conftest import make_image

    make_image(tmp_path / "only" / "a.png")
    assert main(["audit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sub-folder" in err and str(tmp_path) in err


def test_audit_prints_a_short_summary_and_writes_the_full_list(tmp_path, capsys, monkeypatch):
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "data", per_class=12)
    for label in ("chihuahua", "muffin"):  # 24 exact duplicate groups
        for source in sorted((data / label).iterdir()):
            (data / label / f"copy-{source.name}").write_bytes(source.read_bytes())
    monkeypatch.setenv("CHIMUF_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["audit", str(data), "--config", str(smoke_sides(tmp_path))]) == 0
    short = capsys.readouterr().out
    assert len(short.splitlines()) <= 30 and "... 21 more groups" in short
    full_list = Path(short.rsplit("Every file and group: ", 1)[1].split(" (or run")[0])
    assert full_list.read_text().count("exact 2 files") == 24
    assert main(["audit", str(data), "--list-duplicates", "--config", str(smoke_sides(tmp_path))]) == 0
    assert capsys.readouterr().out.count("exact 2 files") == 24


def smoke_sides(tmp_path: Path) -> Path:
    config = tmp_path / "audit.toml"
    config.write_text("[audit]\nmin_side = 16\n")
    return config


def test_study_flags_become_the_data_keys_as_absolute_paths(tmp_path, monkeypatch):
    from chimuf.cli import build_parser, data_overrides

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["study", "--test-dir", "held-out", "--labels", "l.csv"])
    assert data_overrides(args) == {"test_dir": str(tmp_path / "held-out"),
                                    "labels_csv": str(tmp_path / "l.csv")}


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


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "data" / "a").mkdir(parents=True)
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a run folder")
    assert main(["study", "--data", str(tmp_path / "data"), "--out", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists and is not a folder" in err


def test_negative_seed_on_the_command_line_is_one_line(tmp_path, capsys):
    (tmp_path / "data" / "a").mkdir(parents=True)
    assert main(["study", "--seed", "-5", "--data", str(tmp_path / "data"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "chimuf study: error: `seed` must be a whole number from 0 to 4294967295 (2**32 - 1), " \
                  "got -5"


def test_an_error_naming_a_path_with_control_characters_stays_one_line(tmp_path, capsys):
    assert main(["config", "--config", str(tmp_path / "a\nb\x1b[2J.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and r"a\nb\x1b[2J.toml" in err


def test_error_detail_goes_to_the_run_log_not_the_terminal(tmp_path, monkeypatch, capsys):
    from chimuf import cli
    from chimuf.core.errors import ModelError

    log = tmp_path / "study.log"

    def failing(args, console):
        console.log_to(log)
        raise ModelError("model `m.keras` could not be loaded by Keras (short reason)",
                         detail="Keras said\nat length\nover lines")

    monkeypatch.setitem(cli.COMMANDS, "config", failing)
    assert main(["config"]) == 2
    expected = "chimuf config: error: model `m.keras` could not be loaded by Keras (short reason)\n"
    assert capsys.readouterr().err == expected
    assert "error detail: Keras said\nat length\nover lines" in log.read_text()


def test_a_study_stopped_after_a_stage_is_recorded_stopped_and_resumes_without_a_kill_warning(tmp_path):
    import io
    import json

    from chimuf.core.console import Console
    from chimuf.study import StudyPaths, run_study
    from tests.conftest import make_dataset

    paths = StudyPaths(make_dataset(tmp_path / "data", per_class=10), tmp_path / "run", tmp_path / "cache")
    config = load_config(profile="smoke")
    run_study(config, paths, Console(stream=io.StringIO(), live=False), stop_after="split")
    assert json.loads((paths.run_dir / "run.json").read_text())["status"] == "stopped"
    assert json.loads((paths.run_dir / "results.json").read_text())["run"]["status"] == "stopped"
    stream = io.StringIO()
    run_study(config, paths, Console(stream=stream, live=False), stop_after="split")
    assert "stopped after `split` as asked; resuming" in stream.getvalue()
    assert "was killed" not in stream.getvalue()


def test_a_study_whose_models_would_exceed_the_parameter_cap_is_refused_before_any_work(tmp_path):
    from chimuf.core.errors import ConfigError
    from chimuf.study import check_model_sizes

    check_model_sizes(load_config())  # the paper's study fits the default cap
    with pytest.raises(ConfigError, match=r"at 512 px, the tuner's largest has 134,588,801 parameters"):
        check_model_sizes(load_config(overrides={"data": {"image_size": 512}}))


def test_audit_of_a_labels_csv_audits_the_files_it_names(tmp_path, capsys, monkeypatch):
    from tests.conftest import make_image

    rows = ["path,label"]
    for i, label in enumerate(("cat", "cat", "dog", "dog")):
        make_image(tmp_path / "img" / f"{i}.png", seed=i)
        rows.append(f"img/{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("CHIMUF_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["audit", str(tmp_path / "labels.csv"), "--config", str(smoke_sides(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert f"Audit of {tmp_path / 'labels.csv'}" in out and "4 files in 2 classes: 4 usable" in out
