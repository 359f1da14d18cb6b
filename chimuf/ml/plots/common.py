"""Shared matplotlib set-up: a headless backend and atomic figure files.

Each stage draws its own figures; this module only makes sure no display is needed and that a
figure file is either complete or absent.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from chimuf.core.files import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "font.size": 9})
    return plt


def literal(text: str) -> str:
    """`text` drawn as its characters: matplotlib reads `$...$` as mathematics, so a class or file
    called `$x$` would otherwise come out as an italic x."""
    return str(text).replace("$", r"\$")


def save_figure(figure: Any, path: Path) -> Path:
    """Write `figure` to `path` (PNG) atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
