"""The figures a report shows: found in results.json, checked, copied under report/figures/.

results.json names each figure by a path relative to the run folder. The report copies them to
`report/figures/NN-name.png` so that the Quarto project is self-contained and every path in the
Markdown is a plain, safe name (no spaces, brackets or quotes to escape). A path that is absolute,
climbs out with `..`, or leads out of the run folder through a link is refused: results.json is
data, and data does not get to pick files elsewhere on the disk for the report to publish.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from chimuf.core.errors import ReportError
from chimuf.core.files import atomic_write_bytes, read_bounded
from chimuf.core.results import Figure, Results
from chimuf.report.blocks import slug

MAX_FIGURE_BYTES = 32 * 2**20  # chimuf's figures are PNGs of well under 1 MB; a sparse 3 GiB file is not one

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


@dataclass(frozen=True)
class ImageRef:
    """Where the Markdown finds one figure (a file name or a data: URI) and its cross-ref id."""

    src: str
    ident: str  # "fig-03-model1-aug": Quarto numbers figures whose id starts with "fig-"


# --- 1. which figures, under which names (pure) ------------------------------------------------


def all_figures(results: Results) -> list[Figure]:
    """Every Figure in the stage outcomes, in the order the outcomes list them.

    Walks the dataclasses rather than naming fields, so a figure a stage adds later is still
    copied (and checked) even before a template shows it.
    """
    found: list[Figure] = []

    def walk(value: Any) -> None:
        if isinstance(value, Figure):
            found.append(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for f in dataclasses.fields(results):
        if f.name != "run":
            walk(getattr(results, f.name))
    return found


def check_figure_path(path: str) -> PurePosixPath:
    """`path` from results.json as a relative path inside the run folder, or a ReportError."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not path or pure.is_absolute() or re.match(r"^[A-Za-z]:", path) or ".." in pure.parts:
        raise ReportError(
            f"results.json names the figure `{path}`, which is not a relative path inside the run "
            "folder; the report only shows files of the run. Rerun the stage that made it, or "
            "correct the path in results.json."
        )
    if pure.suffix.lower() not in IMAGE_TYPES:
        raise ReportError(
            f"results.json names the figure `{path}`, which is not a PNG, JPEG or GIF file; "
            "the report shows only those. Rerun the stage that made it."
        )
    return pure


def plan_figures(results: Results) -> dict[str, str]:
    """Figure path in results.json → its name in the report folder ("figures/03-model1-aug.png")."""
    plan: dict[str, str] = {}
    for figure in all_figures(results):
        if figure.path in plan:
            continue
        pure = check_figure_path(figure.path)
        name = slug(pure.with_suffix("").as_posix())[:60]
        plan[figure.path] = f"figures/{len(plan) + 1:02d}-{name}{pure.suffix.lower()}"
    return plan


def ident(target: str) -> str:
    return "fig-" + PurePosixPath(target).stem


# --- 2. copy them (files) ----------------------------------------------------------------------


def place_figures(run_dir: Path, report_dir: Path,
                  plan: dict[str, str]) -> tuple[dict[str, ImageRef], list[str]]:
    """Copy every planned figure that exists into report_dir; return refs and the missing paths.

    Old figures are removed first: a figure that a rerun no longer makes must not linger.
    """
    root = run_dir.resolve()
    folder = report_dir / "figures"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    placed: dict[str, ImageRef] = {}
    missing: list[str] = []
    for source, target in plan.items():
        real = (run_dir / source).resolve()
        if not real.is_relative_to(root):
            raise ReportError(
                f"figure `{source}` in results.json leads out of the run folder (to `{real}`) "
                "through a link; the report only shows files of the run. Replace the link by the file."
            )
        if not real.exists():
            missing.append(source)
            continue
        data = read_bounded(run_dir / source, MAX_FIGURE_BYTES, "figure", ReportError, root=run_dir)
        atomic_write_bytes(report_dir / target, data)
        placed[source] = ImageRef(target, ident(target))
    return placed, missing


def embedded(report_dir: Path, placed: dict[str, ImageRef]) -> dict[str, ImageRef]:
    """The same figures as data: URIs, for a one-file HTML made by pandoc in its sandbox.

    pandoc's --sandbox lets it read only the files named on its command line, so it cannot embed
    images itself; handing it data: URIs keeps the sandbox and the single self-contained file.
    """
    out = {}
    for source, ref in placed.items():
        data = read_bounded(report_dir / ref.src, MAX_FIGURE_BYTES, "figure", ReportError, root=report_dir)
        kind = IMAGE_TYPES[PurePosixPath(ref.src).suffix]
        out[source] = ImageRef(f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}", ref.ident)
    return out
