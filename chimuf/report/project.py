"""The Quarto project beside the runs: the latest run's report, for `quarto render report`.

Every run keeps its own report in RUN/report/. After a study (and after `chimuf report RUN`) the
same Quarto project (index.qmd, figures/, _quarto.yml, include/, and the HTML and PDF made from
them) is also published into one project folder, with `.run` naming the run it came from, so
that `quarto render report` at the root of a checkout renders the latest run.

Which folder, first match:

1. `--project DIR` (`chimuf study`, `chimuf report`), `project=` in the Python API (`none`: off);
2. $CHIMUF_REPORT_PROJECT (`none` turns publishing off; the test suite points it at a tmp folder);
3. `report/` in the current folder, only when it is chimuf's Quarto project already, i.e. its
   _quarto.yml is chimuf's (a checkout of chimuf has one).

Otherwise there is none: an installed chimuf run from any other folder never creates a report/
folder there. A folder that is neither empty nor a chimuf project is refused, so a mistyped
`--project ~` cannot replace someone's files.

Publishing fills a new folder beside the project (the files of the old one that chimuf did not
make, e.g. a README, are carried over), then swaps it in (chimuf.core.files.replace_dir): the
project holds one run's report or the next one's, never a mix, and no figure of an earlier run.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from chimuf.core.errors import ReportError
from chimuf.core.files import atomic_write_text, replace_dir

PROJECT_ENV = "CHIMUF_REPORT_PROJECT"
OFF = "none"  # as --project or $CHIMUF_REPORT_PROJECT: publish nowhere
DEFAULT = Path("report")  # relative to the current folder
RUN_MARKER = ".run"  # one line: the absolute path of the run folder the project came from

# Made by chimuf from a run (or by rendering them): replaced on every publish, never carried over.
FROM_THE_RUN = ("_quarto.yml", "include", "index.qmd", "figures", "index.html", "index.pdf")
RENDERED = (RUN_MARKER, "index.typ", "_build", ".quarto", "index_files")
STAGING = (".new-", ".old-")  # name parts of the folders beside the project while it is swapped


def project_dir(explicit: Path | None, cwd: Path) -> Path | None:
    """Where the Quarto project goes (see the module's docstring), or None for nowhere."""
    chosen = str(explicit) if explicit is not None else os.environ.get(PROJECT_ENV, "")
    if chosen:
        return None if chosen.lower() == OFF else Path(chosen)
    default = cwd / DEFAULT
    return default if is_chimuf_project(default) else None


def is_chimuf_project(folder: Path) -> bool:
    """A folder chimuf has published into, or a checkout's report/ (chimuf's own _quarto.yml)."""
    if (folder / RUN_MARKER).is_file():
        return True
    try:
        return "chimuf" in (folder / "_quarto.yml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def check_project_dir(folder: Path) -> Path:
    """`folder`, if chimuf may replace it: missing, empty, or a chimuf project; else ReportError.

    Checked before a study starts, so a bad --project fails in a second, not after the study."""
    if folder.exists() and not folder.is_dir():
        raise ReportError(f"report project `{folder}` is a file; give --project a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_chimuf_project(folder):
        raise ReportError(
            f"report project `{folder}` holds files and is not a chimuf report project (no chimuf "
            "_quarto.yml, no .run); chimuf replaces its project folder whole, so give --project a new "
            "or empty folder"
        )
    return folder


def publish(run_dir: Path, project: Path) -> Path:
    """Copy RUN/report's Quarto project (and its renders) into `project`, swapped in whole.

    Returns `project`. The run folder must hold a report (build_report made it)."""
    source = run_dir / "report"
    if not (source / "index.qmd").is_file():
        raise ReportError(f"run `{run_dir}` has no report yet (no report/index.qmd); run "
                          f"`chimuf report {run_dir}` first")
    project = check_project_dir(project)
    project.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(project)
    staging = Path(tempfile.mkdtemp(prefix=f".{project.name}.new-", dir=project.parent))
    try:
        # 1. What the old project holds that chimuf did not make (a README, say).
        if project.is_dir():
            for entry in project.iterdir():
                if entry.name not in FROM_THE_RUN + RENDERED:
                    copy(entry, staging / entry.name)
        # 2. The run's Quarto project and its HTML and PDF, then the marker.
        for name in FROM_THE_RUN:
            if (source / name).exists():
                copy(source / name, staging / name)
        atomic_write_text(staging / RUN_MARKER, f"{run_dir.resolve()}\n")
        staging.chmod(0o755)  # mkdtemp makes 0700
        # 3. In one step: the old project or the new one, never a mix.
        replace_dir(staging, project)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return project


def published_run(project: Path) -> Path | None:
    """The run folder a project came from (its .run), or None."""
    try:
        line = (project / RUN_MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(line) if line else None


def copy(source: Path, target: Path) -> None:
    """Copy folders and regular files; links, FIFOs and devices (a run folder from someone else may
    hold them) are left out: copying would block on a FIFO or publish a link to anywhere."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, ignore=unsafe_entries)
    elif source.is_file() and not source.is_symlink():
        shutil.copy2(source, target, follow_symlinks=False)


def unsafe_entries(folder: str, names: list[str]) -> set[str]:
    """The entries of `folder` that are neither regular files nor folders (links included)."""
    def plain(name: str) -> bool:
        mode = (Path(folder) / name).lstat().st_mode
        return stat.S_ISREG(mode) or stat.S_ISDIR(mode)

    return {name for name in names if not plain(name)}


def remove_stale_staging(project: Path, older_than_s: float = 3600.0) -> None:
    """Folders a killed publish left beside the project (hours old: not another one's at work)."""
    for entry in project.parent.glob(f".{project.name}.*"):
        stale = entry.is_dir() and time.time() - entry.stat().st_mtime > older_than_s
        if stale and any(part in entry.name for part in STAGING):
            shutil.rmtree(entry, ignore_errors=True)
