"""The building blocks of the report's Markdown: number formats, tables, figures.

Each returns `Trusted` Markdown, built from escaped pieces (escape.py), so the templates can
place it as is. Numbers come from results.json and are only formatted here: "n/a" stands for a
value a stage could not measure (None or NaN), never for a number made up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from chimuf.core.console import format_seconds
from chimuf.core.results import Figure, Interval
from chimuf.report.escape import Trusted, finalize, markdown_text

# --- formats, used as Jinja filters ------------------------------------------------------------


def is_missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: float | None, digits: int = 3) -> Trusted:
    """0.940; "n/a" for a value a stage could not measure (None or NaN)."""
    return Trusted("n/a" if is_missing(x) else markdown_text(f"{x:.{digits}f}"))


def count(n: int | None) -> Trusted:
    return Trusted("n/a" if n is None else markdown_text(f"{n:,}"))


def counted(n: int, noun: str, plural_form: str = "") -> Trusted:
    """"1 file", "2 files": a count with its noun."""
    word = noun if n == 1 else (plural_form or noun + "s")
    return Trusted(f"{count(n)} {markdown_text(word)}")


def interval(iv: Interval | None, digits: int = 3) -> Trusted:
    if iv is None or is_missing(iv.low) or is_missing(iv.high):
        return Trusted("")
    return Trusted(markdown_text(f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"))


def with_interval(x: float | None, iv: Interval | None, digits: int = 3) -> Trusted:
    """0.940 [0.926, 0.953]: a measured value and its confidence interval."""
    bounds = interval(iv, digits)
    return Trusted(f"{num(x, digits)} {bounds}".strip())


def seconds(s: float | None) -> Trusted:
    return Trusted("n/a" if is_missing(s) else markdown_text(format_seconds(s)))


def plain(value: object) -> str:
    """A config or hyperparameter value as text: lists joined, booleans as TOML writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:g}"
    if value is None:
        return "n/a"
    return str(value)


def yesno(flag: bool) -> str:
    return "yes" if flag else "no"


def strong(value: object) -> Trusted:
    return Trusted(f"**{finalize(value)}**")


def hyperparameters(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {plain(v)}" for k, v in values.items()) or "none"


def architecture(name: str) -> str:
    """"model3" → "Model 3"; "tuned" → "Tuned model"; other names as they are."""
    if name.startswith("model") and name[5:].isdigit():
        return f"Model {name[5:]}"
    return "Tuned model" if name == "tuned" else name


def slug(text: str) -> str:
    """A heading id made of lower-case letters, digits and dashes, whatever the text."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


# --- Markdown building blocks ------------------------------------------------------------------

ALIGN = {"l": ":--", "r": "--:", "c": ":-:"}


def table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> Trusted:
    """A pipe table; every cell is escaped unless it is Trusted. `align`: l, r or c per column.

    When a table is wider than a line, pandoc sizes its columns by the dashes of the rule, so
    their number follows the column's content (see column_width).
    """
    head_cells = [finalize(h) for h in header]
    body = [[finalize(plain_cell(c)) for c in row] for row in rows]
    assert all(len(row) == len(head_cells) for row in body), f"a row of table {header} has another width"
    align = align or "l" * len(header)
    columns = [[head_cells[i], *(row[i] for row in body)] for i in range(len(header))]
    rule = "|" + "|".join(rule_cell(align[i], column_width(columns[i])) for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(head_cells) + " |", rule]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return Trusted("\n".join(lines) + "\n")


def column_width(cells: Sequence[str]) -> int:
    """Dashes for a column: room for its longest word (words do not break), and for its longest
    cell up to 40 characters (longer cells wrap); at least 10."""
    longest_word = max((text_width(word) for cell in cells for word in cell.split()), default=0)
    longest_cell = max((text_width(cell) for cell in cells), default=0)
    return max(10, longest_word + 4, min(40, longest_cell))


def text_width(text: str) -> int:
    """Roughly how wide `text` prints, in lower-case letters: capitals count one and a half."""
    return len(text.replace("\\", "")) + sum(c.isupper() for c in text) // 2


def plain_cell(value: object) -> object:
    return value if isinstance(value, (str, Trusted)) else plain(value)


def rule_cell(align: str, width: int) -> str:
    colons = ALIGN[align]
    return colons[0] + "-" * max(1, width - 2) + colons[-1]


def figure(context: Mapping[str, Any], fig: Figure | None, what: str = "figure", width: int = 0,
           ident: str = "") -> Trusted:
    """`![caption](src){#fig-id}` alone in a paragraph: a numbered, captioned figure.

    A figure the stage did not make, or whose file is gone, is said so in italics. `width` (a
    percentage of the text width) draws it smaller; `ident` gives a figure shown a second time
    (on the at-a-glance page) an id of its own.
    """
    if fig is None:
        return Trusted(f"*No {markdown_text(what)} was made in this run.*\n")
    ref = context["images"].get(fig.path)
    if ref is None:
        return Trusted(
            f"*The {markdown_text(what)} file {markdown_text(fig.path)} named in results.json is "
            "missing from the run folder.*\n"
        )
    caption = markdown_text(fig.caption) or markdown_text(what)
    size = f" width={int(width)}%" if width else ""
    return Trusted(f"![{caption}]({ref.src}){{#{slug(ident) if ident else ref.ident}{size}}}\n")


def file_link(path: str) -> Trusted:
    """A link from the report (RUN/report/) to a file of the run (a CSV), its run-relative path as
    the text; a path that is not a plain relative path inside the run is shown, not linked."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        return Trusted(markdown_text(path))
    return Trusted(f"[{markdown_text(path)}](../{quote(path, safe='/')})")


def not_run(stage: str, off: bool = False) -> Trusted:
    """The one line a section holds when its stage has no results: switched off by the config, or
    not run yet."""
    if off:
        return Trusted(f"*Switched off in this run's config: the {markdown_text(stage)} stage did not run "
                       "(see the settings that depart from the paper).*\n")
    return Trusted(f"*Not run yet in this run: the {markdown_text(stage)} stage has no results.*\n")
