"""The Quarto project beside the runs (report/ of a checkout): where it goes, what it holds, and
that publishing a run replaces it whole. And chimuf's Quarto command line, through a stand-in.

The runs are report_fixture.py's hand-made ones (nothing is trained).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chimuf.cli import main
from chimuf.core.config import ReportConfig
from chimuf.core.console import Console
from chimuf.core.errors import ReportError
from chimuf.core.files import replace_dir
from chimuf.report import build_report
from chimuf.report.project import PROJECT_ENV, RUN_MARKER, project_dir, publish, published_run
from chimuf.report.resources import PROJECT_TEMPLATE_DIR
from tests.report_fixture import complete_results, partial_results, write_run

QUIET = Console(quiet=True, live=False)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete fixture run with its report rendered (HTML and PDF, pandoc and Typst)."""
    run_dir = tmp_path_factory.mktemp("complete") / "complete-run"
    write_run(run_dir, complete_results(run_dir))
    build_report(run_dir, ReportConfig(engine="pandoc"), QUIET)
    return run_dir


def partial_run(root: Path) -> Path:
    run_dir = write_run(root / "partial-run", partial_results(root / "partial-run"))
    build_report(run_dir, ReportConfig(formats=("html",), engine="pandoc"), QUIET)
    return run_dir


# --- where the project goes --------------------------------------------------------------------


def test_project_is_the_current_folders_report_only_when_it_is_chimufs(tmp_path, monkeypatch):
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    assert project_dir(None, tmp_path) is None  # any folder: nothing is created there
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "_quarto.yml").write_text("project:\n  type: book\n")
    assert project_dir(None, tmp_path) is None  # someone else's Quarto project
    (tmp_path / "report" / "_quarto.yml").write_bytes((PROJECT_TEMPLATE_DIR / "_quarto.yml").read_bytes())
    assert project_dir(None, tmp_path) == tmp_path / "report"  # a checkout of chimuf


def test_flag_then_environment_then_checkout_decide_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "from-env"))
    assert project_dir(tmp_path / "flag", tmp_path) == tmp_path / "flag"
    assert project_dir(None, tmp_path) == tmp_path / "from-env"
    assert project_dir(Path("none"), tmp_path) is None  # the flag turns it off as the variable does
    monkeypatch.setenv(PROJECT_ENV, "none")
    assert project_dir(None, tmp_path) is None
    assert project_dir(tmp_path / "flag", tmp_path) == tmp_path / "flag"


def test_the_test_suite_publishes_outside_the_checkout(report_project_outside_the_checkout):
    checkout = Path(__file__).resolve().parents[1]
    assert project_dir(None, checkout) == report_project_outside_the_checkout
    assert checkout not in report_project_outside_the_checkout.parents


# --- publishing ---------------------------------------------------------------------------------


def test_publish_copies_the_runs_quarto_project_and_names_the_run(complete_run, tmp_path):
    project = publish(complete_run, tmp_path / "report")
    assert published_run(project) == complete_run.resolve()
    assert (project / RUN_MARKER).read_text() == f"{complete_run.resolve()}\n"
    for name in ("_quarto.yml", "include/head.html", "include/typst-header.typ", "index.qmd",
                 "index.html", "index.pdf"):
        assert (project / name).read_bytes() == (complete_run / "report" / name).read_bytes(), name
    assert sorted(p.name for p in (project / "figures").iterdir()) == \
        sorted(p.name for p in (complete_run / "report" / "figures").iterdir())
    assert not (project / "index.typ").exists()  # pandoc's intermediate stays in the run


def test_publishing_another_run_replaces_the_project_whole(complete_run, tmp_path):
    project = publish(complete_run, tmp_path / "report")
    (project / "README.md").write_text("notes of my own\n")
    (project / "figures" / "stale.png").write_bytes(b"old")
    partial = partial_run(tmp_path)
    publish(partial, project)
    assert published_run(project) == partial.resolve()
    assert (project / "index.qmd").read_bytes() == (partial / "report" / "index.qmd").read_bytes()
    assert sorted(p.name for p in (project / "figures").iterdir()) == \
        sorted(p.name for p in (partial / "report" / "figures").iterdir())  # no figure of the first run
    assert not (project / "index.pdf").exists()  # the partial run rendered HTML only
    assert (project / "README.md").read_text() == "notes of my own\n"  # not chimuf's: carried over
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.")] == []


def test_a_folder_that_is_not_a_chimuf_project_is_refused_and_left_alone(complete_run, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ReportError, match="not a chimuf report project"):
        publish(complete_run, folder)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]


def test_replace_dir_swaps_a_folder_for_another(tmp_path):
    old, new = tmp_path / "project", tmp_path / "next"
    for folder, name in ((old, "a.txt"), (new, "b.txt")):
        folder.mkdir()
        (folder / name).write_text(name)
    replace_dir(new, old)
    assert [p.name for p in old.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_chimuf_report_with_project_publishes_there(tmp_path):
    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))
    project = tmp_path / "elsewhere" / "report"
    assert main(["--quiet", "report", str(run_dir), "--format", "html", "--engine", "pandoc",
                 "--project", str(project)]) == 0
    assert published_run(project) == run_dir.resolve()
    assert (project / "index.html").is_file()


def test_chimuf_report_refuses_a_bad_project_before_rendering(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    assert main(["report", str(run_dir), "--project", str(tmp_path / "notes")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a chimuf report project" in err
    assert not (run_dir / "report").exists()


# --- Quarto's command line, through a stand-in -------------------------------------------------

STAND_IN = """#!/bin/sh
# A STAND-IN for Quarto, which cannot be installed on this machine: it records the folder it runs in
# and its arguments, and writes the file its --output names, as `quarto render` would.
{ pwd; for arg in "$@"; do printf '%s\\n' "$arg"; done; echo --; } >> "$QUARTO_CALLS"
while [ $# -gt 0 ]; do
    if [ "$1" = "--output" ]; then out="$2"; fi
    shift
done
echo "rendered by the stand-in" > "$out"
"""


def test_quarto_is_called_with_chimufs_command_line_in_the_report_folder(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "quarto").write_text(STAND_IN)
    (bin_dir / "quarto").chmod(0o755)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("QUARTO_CALLS", str(calls))
    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))

    outcome = build_report(run_dir, ReportConfig(), QUIET)  # engine auto: Quarto, as it is on PATH

    report_dir = str((run_dir / "report").resolve())
    recorded = [call.strip().splitlines() for call in calls.read_text().split("--\n") if call.strip()]
    assert recorded == [
        [report_dir, "render", "index.qmd", "--to", "html", "--output", "chimuf-partial-index.html"],
        [report_dir, "render", "index.qmd", "--to", "typst", "--output", "chimuf-partial-index.pdf"],
    ]
    assert outcome.engine == "quarto"
    assert (outcome.html, outcome.pdf) == ("report/index.html", "report/index.pdf")
    assert (run_dir / "report" / "index.html").read_text() == "rendered by the stand-in\n"
    assert not list((run_dir / "report").glob("chimuf-partial-*"))
