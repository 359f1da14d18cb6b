"""Drawing for the data's labels: thumbnail strips of duplicate groups (the suspects' gallery is
chimuf.ml.plots.explain_plots.draw_gallery, the same grid as the error gallery).

Plain numpy arrays in, an unsaved matplotlib Figure out; chimuf.stages.labels saves it. Text on
the thumbnails goes through chimuf.ml.plots.common.literal, so names are drawn as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chimuf.ml.plots.common import literal, pyplot
from chimuf.ml.plots.explain_plots import bare

STRIP_CELL_IN = 1.1  # inches per thumbnail
STRIP_MAX = 6  # thumbnails per row of the figure, and at most per group
CROSS_CLASS_COLOUR = "tab:red"  # the frame of a group that spans classes
SAME_CLASS_COLOUR = "0.6"


@dataclass
class Strip:
    """One duplicate group: a title, and its images (S, S, 3) uint8 with a label under each."""

    title: str
    images: np.ndarray  # (k, S, S, 3) uint8, k <= STRIP_MAX
    labels: Sequence[str]
    more: int = 0  # members not drawn
    cross_class: bool = False


def pack(strips: Sequence[Strip]) -> list[list[tuple[int, int]]]:
    """Rows of (strip, member) cells, STRIP_MAX to a row: groups side by side, a group never cut
    across two rows (most groups are pairs, so a row holds three of them)."""
    rows: list[list[tuple[int, int]]] = [[]]
    for s, strip in enumerate(strips):
        cells = [(s, k) for k in range(min(STRIP_MAX, len(strip.images)))]
        if len(rows[-1]) + len(cells) > STRIP_MAX:
            rows.append([])
        rows[-1].extend(cells)
    return [row for row in rows if row]


def draw_strips(strips: Sequence[Strip]) -> Any:
    """The groups packed in rows; each group framed (red when it spans classes), its title over
    its first thumbnail, each file's label under it."""
    rows = pack(strips)
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), STRIP_MAX, squeeze=False, layout="constrained",
                             figsize=(STRIP_MAX * STRIP_CELL_IN, len(rows) * (STRIP_CELL_IN + 0.55)))
    for row_axes, row in zip(axes, rows, strict=True):
        for k, ax in enumerate(row_axes):
            bare(ax)
            if k >= len(row):
                ax.set_visible(False)
                continue
            s, member = row[k]
            strip = strips[s]
            ax.imshow(strip.images[member])
            frame(ax, CROSS_CLASS_COLOUR if strip.cross_class else SAME_CLASS_COLOUR)
            label = strip.labels[member]
            if strip.more and member == len(strip.images) - 1:
                label += f"\n(+{strip.more} more)"
            ax.set_xlabel(literal(label), fontsize=7)
            if member == 0:
                ax.set_title(literal(strip.title), fontsize=7, loc="left")
    return fig


def frame(ax: Any, colour: str) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(2)
