"""The report of a run: results.json and its figures → Markdown → HTML and PDF.

The report knows results, not TensorFlow: it reads `RUN/results.json` and the figure files it
names, and nothing else; it never recomputes a number. Three steps, each in its own module:

1. results → Markdown, a pure function (markdown.py; the text is in templates/*.j2, and every
   value from the run is escaped as literal text by default, escape.py);
2. write RUN/report/ as a Quarto project: _quarto.yml, include/, index.qmd and the figures
   under figures/ (render.py, figures.py);
3. render HTML and PDF: `quarto render` where Quarto is installed, else pandoc for HTML and
   pandoc's Typst writer plus the typst package for PDF (render.py).

The templates and Quarto files travel inside the package (resources.py). After rendering, the
study and `chimuf report` may publish RUN/report/ into the top-level Quarto project, report/ of a
checkout or `--project DIR` (project.py), for `quarto render report`.

A partial run renders too: a stage without results gets a section that says it has not run yet.

    chimuf report runs/paper        # → runs/paper/report/index.html and index.pdf
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chimuf.core.config import ReportConfig
from chimuf.core.console import Console
from chimuf.core.errors import ReportError
from chimuf.core.files import own_folder, read_bounded
from chimuf.core.results import LayoutError, ReportOutcome, Results, load_results
from chimuf.report.figures import embedded, place_figures, plan_figures
from chimuf.report.markdown import own_templates, render_markdown
from chimuf.report.render import (
    Deadline,
    check_typst,
    choose_engine,
    pandoc_path,
    render_html_pandoc,
    render_pdf_pandoc,
    render_quarto,
    write_project,
)

__all__ = ["build_report", "read_results"]


def build_report(run_dir: Path, cfg: ReportConfig, console: Console) -> ReportOutcome:
    """Render the report of the run in `run_dir` into `run_dir/report/`; paths in the outcome are
    relative to `run_dir`. Raises ReportError (missing results or tool, failing tool, timeout)."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    engine = choose_engine(cfg.engine)
    if engine == "pandoc":
        pandoc_path()
        if "pdf" in cfg.formats:
            check_typst()

    # 1. Which figures, under which names; paths leading out of the run are refused here.
    plan = plan_figures(results)
    report_dir = run_dir / "report"
    for folder in (report_dir, report_dir / "figures", report_dir / "include"):  # before any write
        own_folder(folder, run_dir, "report folder", ReportError)
    report_dir.mkdir(parents=True, exist_ok=True)
    placed, missing = place_figures(run_dir, report_dir, plan)
    for path in missing:
        console.warn(f"figure `{path}` named in results.json is missing; the report says so")

    # 2. The Markdown and the Quarto project around it.
    own = Path(cfg.templates).expanduser().resolve() if cfg.templates else own_templates(results)
    index = write_project(report_dir, render_markdown(results, placed, own))
    console.info(f"  report: {len(placed)} figures, Markdown in {index}")

    # 3. HTML and PDF, within cfg.timeout_s for the whole render.
    deadline = Deadline(cfg.timeout_s)
    outputs: dict[str, Path] = {}
    if engine == "quarto":
        console.info("  report: rendering with Quarto")
        outputs = render_quarto(report_dir, tuple(cfg.formats), deadline)
    else:
        if "html" in cfg.formats:
            console.info("  report: rendering HTML with pandoc")
            html_markdown = render_markdown(results, embedded(report_dir, placed), own)
            outputs["html"] = render_html_pandoc(report_dir, html_markdown, deadline)
        if "pdf" in cfg.formats:
            console.info("  report: rendering PDF with pandoc and Typst")
            outputs["pdf"] = render_pdf_pandoc(report_dir, deadline)

    def rel(path: Path | None) -> str:
        return path.resolve().relative_to(run_dir.resolve()).as_posix() if path else ""

    return ReportOutcome(markdown=rel(index), html=rel(outputs.get("html")),
                         pdf=rel(outputs.get("pdf")), engine=engine)


MAX_RESULTS_BYTES = 256 * 2**20  # a study's results.json is well under 10 MB


def read_results(run_dir: Path) -> Results:
    """The run's results.json, or a ReportError that says what to do. Read as a file someone else
    may have made: a regular file inside the run, at most MAX_RESULTS_BYTES, of two classes."""
    path = run_dir / "results.json"
    try:
        data = read_bounded(path, MAX_RESULTS_BYTES, "results.json", ReportError, root=run_dir)
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"`{path}` is not UTF-8 text ({exc.reason}); rerun the study to rewrite "
                          "it") from None
    except FileNotFoundError:
        raise ReportError(
            f"no results.json in `{run_dir}`: this is not a chimuf run folder, or its study has not "
            "finished a stage yet. Run `chimuf study --out RUN_DIR` first, then `chimuf report RUN_DIR`."
        ) from None
    except OSError as exc:
        raise ReportError(f"cannot read `{path}` ({exc.strerror or exc})") from None
    try:
        results = load_results(text)
        check_two_classes(results)
        return results
    except json.JSONDecodeError as exc:
        raise ReportError(f"`{path}` is not valid JSON ({exc}); rerun the study to rewrite it") from None
    except RecursionError:
        raise ReportError(f"`{path}` nests its JSON too deeply to be a results.json; rerun the study "
                          "to rewrite it") from None
    except LayoutError as exc:
        raise ReportError(
            f"`{path}` does not have the layout of results.json (docs/results.md): {exc}; rerun the "
            "study with this chimuf to rewrite it"
        ) from None
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ReportError(
            f"`{path}` does not have the layout of results.json (docs/results.md): {exc!r}; "
            "rerun the study with this chimuf to rewrite it"
        ) from None


def check_two_classes(results: Any) -> None:
    """Every class list of the run names two classes, every confusion matrix is 2 × 2 and every
    per-class list has at most two rows: the report and compare are written for a binary study,
    and a tampered results.json must stop here in one line, not deep in a table (LayoutError)."""
    for where, name, value in walk(results, "results"):
        if name == "classes" and isinstance(value, list) and len(value) != 2:
            raise LayoutError(f"{where} names {len(value)} classes; a chimuf study has two")
        if name == "confusion_matrix" and isinstance(value, list) and (
                len(value) != 2 or any(not isinstance(r, list) or len(r) != 2 for r in value)):
            raise LayoutError(f"{where} is not a 2 × 2 matrix")
        if name == "per_class" and isinstance(value, list) and len(value) > 2:
            raise LayoutError(f"{where} has {len(value)} rows; a chimuf study has two classes")


def walk(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """(path, field name, value) of every field of the dataclasses inside `value`."""
    if depth > 12:
        return
    if dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            inner = getattr(value, field.name)
            yield f"{where}.{field.name}", field.name, inner
            yield from walk(inner, f"{where}.{field.name}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{where}[{key!r}]", depth + 1)
