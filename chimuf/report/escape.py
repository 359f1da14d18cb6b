"""Escaping: every string that comes from a run is shown as literal text, nothing else.

File names, class names, config values and error messages end up in Markdown, which pandoc or
Quarto turn into HTML and Typst. A file called `<img src=x onerror=alert(1)> $x$ *star*.jpg` must
come out as those characters, not as an image, maths or emphasis. Markdown (pandoc's and
CommonMark's) lets a backslash make any ASCII punctuation character literal, so the escape is
simple and complete: a backslash before every ASCII punctuation character. Whitespace runs become
one space (a newline would end a table row or start a block), and control characters go.

The templates never call `markdown_text` themselves: `finalize` runs on every `{{ value }}` of
every template (Jinja's `finalize` hook), so escaping is the default. Markdown the templates build
themselves (tables, figures, emphasis) is wrapped in `Trusted`, the one explicit opt-out.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any

PUNCTUATION = frozenset(string.punctuation)

# Characters that change how text is drawn without being text: C0/C1 controls, bidirectional
# overrides and isolates (they can make a file name read backwards).
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
WHITESPACE = re.compile(r"\s+")
DIGIT = frozenset(string.digits)


class Trusted(str):
    """Markdown built by chimuf itself (a table, a figure, emphasis): passed through as is."""


def markdown_text(value: object) -> str:
    """`value` as Markdown that renders to exactly its text.

    Every ASCII punctuation character gets a backslash, except `.` and `,` between two digits
    ("0.940" stays readable in the .qmd; there they can start neither a list nor anything else).
    """
    text = WHITESPACE.sub(" ", INVISIBLE.sub(" ", str(value))).strip()
    out = []
    for i, char in enumerate(text):
        if char in PUNCTUATION and not (char in ".," and between_digits(text, i)):
            out.append("\\")
        out.append(char)
    return "".join(out)


def between_digits(text: str, i: int) -> bool:
    return 0 < i < len(text) - 1 and text[i - 1] in DIGIT and text[i + 1] in DIGIT


def finalize(value: Any) -> str:
    """Jinja's finalize hook: what `{{ value }}` writes into the Markdown.

    Trusted Markdown passes; None is an empty string; everything else is escaped text. Numbers
    are escaped too (a bare float prints as `repr`), but templates format them with filters.
    """
    if isinstance(value, Trusted):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return markdown_text(value)


def yaml_string(value: object) -> Trusted:
    """A YAML front-matter scalar whose Markdown content is `value` as literal text.

    JSON strings are valid YAML double-quoted scalars, and pandoc reads the scalar's content as
    Markdown, so the text is Markdown-escaped first and then JSON-quoted.
    """
    return Trusted(json.dumps(markdown_text(value), ensure_ascii=False))
