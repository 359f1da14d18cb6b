"""Markdown → HTML and PDF, with Quarto where it is installed, else pandoc and Typst.

Both roads read the same index.qmd. With pandoc: HTML in one self-contained file (figures as
data: URIs, see figures.embedded), and PDF through pandoc's Typst writer and the `typst` package.
Every tool runs in a subprocess of its own, in a new process group, and is killed with its
children when the render's time is up, so a hung tool cannot hang the study. pandoc runs with
--sandbox and a reader that refuses raw HTML, TeX and attributes; Typst compiles with its root
at the report folder. Each output file is written next to its final name and renamed into place,
so a reader sees the previous report or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from chimuf.core.config import REPORT_ENGINES
from chimuf.core.errors import ReportError
from chimuf.core.files import atomic_write_bytes, atomic_write_text, read_bounded
from chimuf.report.resources import PROJECT_TEMPLATE_DIR

# Copied into RUN/report/ at the same relative paths. (The includes sit in include/ because the
# project's .gitignore ignores rendered *.html and *.typ at the top of report/.)
PROJECT_FILES = ("_quarto.yml", "include/head.html", "include/typst-header.typ")

# The Markdown reader, as _quarto.yml sets it: no raw HTML / TeX / attribute blocks, no maths, no
# citations. Run data is escaped anyway; this makes a slip inert rather than live.
READER = "markdown-raw_html-raw_attribute-raw_tex-tex_math_dollars-citations"

MAX_OUTPUT_BYTES = 2**30  # a rendered HTML or PDF, figures embedded

PANDOC_HINT = "install it with `pip install pypandoc-binary` (it ships pandoc 3)"
TYPST_HINT = "install it with `pip install typst`"
QUARTO_HINT = "install Quarto from https://quarto.org/docs/get-started/, or use --engine pandoc"

# Compiles Typst in a child process: the binding compiles in-process and cannot be interrupted.
TYPST_COMPILE = "import sys, typst; typst.compile(sys.argv[1], output=sys.argv[2], root=sys.argv[3])"


@dataclass
class Deadline:
    """The time left for the whole render (cfg.timeout_s), shared by the tools it runs."""

    timeout_s: float
    ends: float = 0.0

    def __post_init__(self) -> None:
        self.ends = time.monotonic() + self.timeout_s

    def left(self) -> float:
        return self.ends - time.monotonic()


# --- 1. the project folder ---------------------------------------------------------------------


def write_project(report_dir: Path, markdown: str) -> Path:
    """RUN/report/ as a Quarto project: _quarto.yml, include/head.html (HTML),
    include/typst-header.typ (PDF) and index.qmd; figures are placed by figures.place_figures.
    Returns the path of index.qmd."""
    for name in PROJECT_FILES:
        source = PROJECT_TEMPLATE_DIR / name
        if not source.is_file():
            raise ReportError(
                f"the report project file `{source}` is missing from chimuf's package data; reinstall "
                "chimuf (its wheel carries it); in a checkout, chimuf/report/project/ must hold the links "
                "into report/ (clone with `git config core.symlinks true`)."
            )
        atomic_write_bytes(report_dir / name, source.read_bytes())
    index = report_dir / "index.qmd"
    atomic_write_text(index, markdown)
    return index


# --- 2. which engine ---------------------------------------------------------------------------


def choose_engine(engine: str) -> str:
    """"quarto" or "pandoc": `auto` takes Quarto when it is on PATH."""
    if engine == "auto":
        return "quarto" if shutil.which("quarto") else "pandoc"
    if engine == "quarto" and not shutil.which("quarto"):
        raise ReportError(f"report.engine is `quarto` but no `quarto` command is on PATH; {QUARTO_HINT}")
    if engine not in REPORT_ENGINES:
        raise ReportError(f"report.engine must be one of {', '.join(REPORT_ENGINES)}, got {engine!r}")
    return engine


def pandoc_path() -> str:
    try:
        import pypandoc
    except ImportError:
        raise ReportError(
            f"rendering the report needs pandoc: the pypandoc package is missing; {PANDOC_HINT}"
        ) from None
    try:
        return str(pypandoc.get_pandoc_path())
    except OSError as exc:
        raise ReportError(
            f"rendering the report needs pandoc, and none was found ({exc}); {PANDOC_HINT}"
        ) from None


def check_typst() -> None:
    if importlib.util.find_spec("typst") is None:
        raise ReportError(f"rendering the PDF needs the typst package, which is missing; {TYPST_HINT}")


# --- 3. running a tool -------------------------------------------------------------------------


def run_tool(args: list[str], cwd: Path, deadline: Deadline, what: str, stdin: bytes | None = None) -> bytes:
    """Run `args` in `cwd`; its stdout, or a ReportError with its stderr or the timeout.

    The tool gets a process group of its own so that, on timeout, it is killed with whatever it
    started (Quarto starts pandoc and Typst).
    """
    left = deadline.left()
    if left <= 0:
        raise ReportError(timeout_message(what, deadline))
    try:
        process = subprocess.Popen(
            args, cwd=cwd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        raise ReportError(f"{what}: could not start `{args[0]}` ({exc.strerror or exc})") from None
    try:
        out, err = process.communicate(stdin, timeout=left)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise ReportError(timeout_message(what, deadline)) from None
    except BaseException:
        kill_group(process)
        raise
    if process.returncode != 0:
        message = err.decode("utf-8", "replace").strip()[-4000:] or "(no output on stderr)"
        raise ReportError(f"{what} failed with exit status {process.returncode}: {message}")
    return out


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the tool and its process group (POSIX); on Windows, which has no process groups of
    this kind, the tool itself."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    process.communicate()


def timeout_message(what: str, deadline: Deadline) -> str:
    return (
        f"{what} did not finish within report.timeout_s = {deadline.timeout_s:g} s and was stopped; "
        "the run's results are untouched. Raise report.timeout_s, or rerun `chimuf report RUN`."
    )


# --- 4. the two roads --------------------------------------------------------------------------


def render_html_pandoc(report_dir: Path, html_markdown: str, deadline: Deadline) -> Path:
    """index.html: one self-contained file, figures embedded as data: URIs, no JavaScript."""
    html = run_tool(
        [pandoc_path(), "-f", READER, "-t", "html5", "--standalone", "--embed-resources",
         "--sandbox", "--mathml", "--toc", "--toc-depth=2", "--number-sections",
         "--include-in-header", "include/head.html"],
        report_dir, deadline, "pandoc (HTML)", stdin=html_markdown.encode("utf-8"),
    )
    target = report_dir / "index.html"
    atomic_write_bytes(target, html)
    return target


def render_pdf_pandoc(report_dir: Path, deadline: Deadline) -> Path:
    """index.pdf: pandoc writes index.typ, Typst compiles it with its root at the report folder."""
    check_typst()
    typ = run_tool(
        [pandoc_path(), "index.qmd", "-f", READER, "-t", "typst", "--standalone", "--sandbox",
         "--toc", "--toc-depth=2", "--number-sections",
         "--include-in-header", "include/typst-header.typ"],
        report_dir, deadline, "pandoc (Typst)",
    )
    atomic_write_bytes(report_dir / "index.typ", typ)
    partial = report_dir / ".index.pdf.partial"
    partial.unlink(missing_ok=True)  # a link left here would have Typst write through it
    try:
        run_tool([sys.executable, "-c", TYPST_COMPILE, "index.typ", partial.name, "."],
                 report_dir, deadline, "typst (PDF)")
        target = report_dir / "index.pdf"
        atomic_write_bytes(target, read_bounded(partial, MAX_OUTPUT_BYTES, "rendered PDF", ReportError))
    finally:
        partial.unlink(missing_ok=True)
    return target


def render_quarto(report_dir: Path, formats: tuple[str, ...], deadline: Deadline) -> dict[str, Path]:
    """index.html and index.pdf with Quarto (its Typst format makes the PDF)."""
    outputs = {}
    for fmt, to, suffix in (("html", "html", ".html"), ("pdf", "typst", ".pdf")):
        if fmt not in formats:
            continue
        partial = f"chimuf-partial-index{suffix}"
        (report_dir / partial).unlink(missing_ok=True)  # a link left here would be written through
        try:
            run_tool(["quarto", "render", "index.qmd", "--to", to, "--output", partial],
                     report_dir, deadline, f"quarto ({fmt})")
            target = report_dir / f"index{suffix}"
            atomic_write_bytes(target, read_bounded(report_dir / partial, MAX_OUTPUT_BYTES, f"rendered {fmt}",
                                                    ReportError))
        finally:
            (report_dir / partial).unlink(missing_ok=True)
        outputs[fmt] = target
    return outputs
