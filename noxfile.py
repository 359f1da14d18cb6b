"""Sessions: tests, lint, smoke, study, report, bench.

    nox -s tests     fast unit tests plus the end-to-end smoke study
    nox -s study     the full study (profile paper) on the data folder; pass args after --
    nox -s smoke     the smoke study alone
    nox -s report    render the Quarto project report/ (the latest run): Quarto, else pandoc/Typst
    nox -s bench     throughput benchmarks, each against a baseline in the same run
    nox -s wheel     the wheel, installed outside the checkout, runs the smoke study

The data folder is --data (after --), else $CHIMUF_DATA, else ./data, else the development
copy in ../shared/data/chihuahua-muffin when it exists. With CHIMUF_GPU=1 the sessions that train
(tests, study, smoke, bench) install the `gpu` extra too: TensorFlow's CUDA libraries, locked
like the rest, so an NVIDIA GPU (Linux, WSL2) trains instead of the CPU.

nox runs on Python 3.11 to 3.13 (TensorFlow 2.21's wheels); on another it stops with one line.

Every session installs exactly the versions in uv.lock (`uv sync --locked`); pyproject.toml keeps
the ranges for people who install chimuf into an environment of their own. After changing a
dependency in pyproject.toml, or to move to newer versions, run `uv lock` (`uv lock --upgrade`,
or `--upgrade-package NAME`), then `nox -s tests wheel`, and commit uv.lock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
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


def python_refusal(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> str:
    """chimuf's own refusal of this Python (chimuf/version.py, loaded by path: nothing is installed
    yet); "" on a Python chimuf runs on."""
    spec = importlib.util.spec_from_file_location("chimuf_version", HERE / "chimuf" / "version.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.python_refusal(version))


def gpu_extras() -> tuple[str, ...]:
    """("gpu",) when CHIMUF_GPU=1 asks for TensorFlow's CUDA wheels, else ()."""
    return ("gpu",) if os.environ.get("CHIMUF_GPU", "").strip() in ("1", "true", "yes") else ()


def install(session: nox.Session, *extras: str) -> None:
    """The session's environment exactly as uv.lock pins it, chimuf itself editable.

    `--locked` refuses a lock that no longer matches pyproject.toml (run `uv lock`, see above).
    """
    refusal = python_refusal()
    if refusal:
        session.error(refusal)
    session.run_install("uv", "sync", "--locked", *(f"--extra={extra}" for extra in extras),
                        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    install(session, "dev", *gpu_extras())
    session.run("pytest", *session.posargs, env=data_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.run_install("uv", "sync", "--locked", "--only-group=lint",
                        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}, external=True)
    session.run("ruff", "check", "chimuf", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def study(session: nox.Session) -> None:
    install(session, *gpu_extras())
    args = session.posargs or ["--profile", "paper"]
    session.run("chimuf", "study", *args, env=data_env())


@nox.session
def smoke(session: nox.Session) -> None:
    install(session, *gpu_extras())
    args = session.posargs or ["--out", "runs/smoke"]
    session.run("chimuf", "study", "--profile", "smoke", *args, env=data_env())


@nox.session
def report(session: nox.Session) -> None:
    """Render the Quarto project report/: `quarto render report` where Quarto is installed, else
    chimuf's own pandoc (HTML) and Typst (PDF) road. The run is the one report/.run names (the
    latest study's), else the newest under runs/, else the one given after --."""
    install(session)
    if shutil.which("quarto") and not session.posargs and (HERE / "report" / "index.qmd").is_file():
        session.run("quarto", "render", "report", external=True)
        return
    target = session.posargs or [str(run) for run in (project_run() or latest_run(),) if run]
    if not target:
        session.error("no run with a results.json under runs/; run `nox -s study` first")
    session.run("chimuf", "report", *target, "--project", str(HERE / "report"))


def project_run() -> Path | None:
    """The run report/.run names, when it still has its results."""
    marker = HERE / "report" / ".run"
    run = Path(marker.read_text(encoding="utf-8").strip()) if marker.is_file() else None
    return run if run is not None and (run / "results.json").is_file() else None


def latest_run() -> Path | None:
    runs = sorted((p.parent for p in (HERE / "runs").glob("*/results.json")),
                  key=lambda p: (p / "results.json").stat().st_mtime)
    return runs[-1] if runs else None


@nox.session
def bench(session: nox.Session) -> None:
    install(session, "dev", *gpu_extras())
    session.run("python", "-m", "benchmarks", *session.posargs, env=data_env())


# --- the wheel, as a user installs it ----------------------------------------------------------


@nox.session(venv_backend="none")
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it with the locked versions into a fresh environment outside the
    checkout, and run the smoke study from an empty folder: HTML and PDF must come out.

    This is what `pip install chimuf` gives a user; the other sessions install the checkout in
    editable mode and would not notice a file missing from the wheel.
    """
    with tempfile.TemporaryDirectory(prefix="chimuf-wheel-") as tmp:
        root = Path(tmp)
        # 1. sdist, then the wheel built from it: both must carry the templates and project files.
        session.run("uv", "build", "--quiet", "--out-dir", str(root / "dist"), str(HERE), external=True)
        (built,) = (root / "dist").glob("chimuf-*.whl")
        # 2. The locked versions (hash-checked), then the wheel itself, then its requirements checked.
        requirements = root / "requirements.txt"
        session.run("uv", "export", "--frozen", "--no-emit-project", "--quiet", "--project", str(HERE),
                    "--output-file", str(requirements), external=True)
        session.run("uv", "venv", "--quiet", "--python", sys.executable, str(root / "venv"), external=True)
        python = root / "venv" / "bin" / "python"
        for args in (["-r", str(requirements)], ["--no-deps", str(built)]):
            session.run("uv", "pip", "install", "--quiet", "--python", str(python), *args, external=True)
        session.run("uv", "pip", "check", "--python", str(python), external=True)
        # 3. The smoke study from an empty folder that is not the checkout.
        work = root / "work"
        work.mkdir()
        data = data_folder() or make_smoke_data(session, python, root)
        env = {"CHIMUF_CACHE_DIR": str(root / "cache"), "CHIMUF_REPORT_PROJECT": "",
               "CHIMUF_LOCK": str(HERE / "uv.lock")}  # so the run facts compare the install with it
        with session.chdir(work):
            where = session.run(str(python), "-c", "import chimuf; print(chimuf.__file__)", silent=True,
                                external=True, env=env)
            if str(HERE) in where or str(root / "venv") not in where:
                session.error(f"chimuf was imported from {where.strip()}, not from the fresh environment")
            session.run(str(root / "venv" / "bin" / "chimuf"), "study", "--profile", "smoke", "--data", data,
                        "--out", "run", external=True, env=env)
        check_wheel_run(session, work)


def check_wheel_run(session: nox.Session, work: Path) -> None:
    """The run finished with both reports, and nothing else appeared in the user's folder."""
    html, pdf = work / "run" / "report" / "index.html", work / "run" / "report" / "index.pdf"
    if not (html.is_file() and html.stat().st_size > 10_000):
        session.error(f"the smoke study made no HTML report at {html}")
    if not (pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")):
        session.error(f"the smoke study made no PDF report at {pdf}")
    lock = json.loads((work / "run" / "results.json").read_text())["run"]["environment"]["lock"]
    if lock["mismatches"]:
        session.error(f"the wheel's environment differs from uv.lock: {lock['mismatches']}")
    others = sorted(p.name for p in work.iterdir() if p.name != "run")
    if others:
        session.error(f"the study wrote {others} into the folder it ran from; only --out belongs there")
    sizes = f"{html.stat().st_size} B of HTML, {pdf.stat().st_size} B of PDF"
    session.log(f"wheel: the smoke study, run from the installed wheel, rendered {sizes}")


SMOKE_IMAGES = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1])
for label, corner in (("chihuahua", 0), ("muffin", 1)):
    for i in range(50):
        pixels = np.random.default_rng(i + 1000 * corner).integers(0, 90, (64, 64, 3), dtype=np.uint8)
        pixels[corner * 42:corner * 42 + 21, corner * 42:corner * 42 + 21] = 230
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / label / f"{label}_{i:03d}.png")
"""


def data_folder() -> str:
    """The data folder the sessions use, or "" when there is none."""
    for folder in (os.environ.get("CHIMUF_DATA"), HERE / "data", SHARED_DATA):
        if folder and Path(folder).is_dir():
            return str(folder)
    return ""


def make_smoke_data(session: nox.Session, python: Path, root: Path) -> str:
    """Where no photos are at hand: 50 generated images per class, as tests/conftest.py makes them."""
    session.run(str(python), "-c", SMOKE_IMAGES, str(root / "data"), external=True)
    return str(root / "data")
