"""Sessions: tests, lint, smoke, study, report, bench.

    nox -s tests     fast unit tests plus the end-to-end smoke study
    nox -s study     the full study (profile paper) on the data folder; pass args after --
    nox -s smoke     the smoke study alone
    nox -s report    re-render the report of the latest run
    nox -s bench     throughput benchmarks, each against a baseline in the same run

The data folder is --data (after --), else $CHIMUF_DATA, else ./data, else the development
copy in ../shared/data/chihuahua-muffin when it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

HERE = Path(__file__).parent
SHARED_DATA = HERE.parent / "shared" / "data" / "chihuahua-muffin"


def data_env() -> dict[str, str]:
    """CHIMUF_DATA for a session: the user's, else ./data, else the shared development copy."""
    if os.environ.get("CHIMUF_DATA") or (HERE / "data").is_dir():
        return {}
    return {"CHIMUF_DATA": str(SHARED_DATA)} if SHARED_DATA.is_dir() else {}


def install(session: nox.Session, extras: str = "") -> None:
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session
def tests(session: nox.Session) -> None:
    install(session, "dev")
    session.run("pytest", *session.posargs, env=data_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "chimuf", "tests", "benchmarks", "noxfile.py")


@nox.session
def study(session: nox.Session) -> None:
    install(session)
    args = session.posargs or ["--profile", "paper"]
    session.run("chimuf", "study", *args, env=data_env())


@nox.session
def smoke(session: nox.Session) -> None:
    install(session)
    args = session.posargs or ["--out", "runs/smoke"]
    session.run("chimuf", "study", "--profile", "smoke", *args, env=data_env())


@nox.session
def report(session: nox.Session) -> None:
    install(session)
    runs = sorted((p.parent for p in (HERE / "runs").glob("*/results.json")),
                  key=lambda p: (p / "results.json").stat().st_mtime)
    target = session.posargs or ([str(runs[-1])] if runs else [])
    if not target:
        session.error("no run with a results.json under runs/; run `nox -s study` first")
    session.run("chimuf", "report", *target)


@nox.session
def bench(session: nox.Session) -> None:
    install(session, "dev")
    session.run("python", "-m", "benchmarks", *session.posargs, env=data_env())
