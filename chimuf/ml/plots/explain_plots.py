"""Drawing for the error analysis (paper section 9): kernels, activation maps, heatmap grids.

Every function here takes plain numpy arrays and returns a matplotlib Figure, unsaved, so the
layout can be checked in tests (axes count, grid shape) without reading pixels; chimuf.stages.explain
computes the arrays and saves the figures. Nothing here imports TensorFlow.

Heatmaps are drawn the way the paper's figure 12 draws them: the "jet" colour map, half
transparent, over the image the model saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from chimuf.ml.plots.common import pyplot

CELL_IN = 1.5  # inches per image cell
HEAT_ALPHA = 0.45  # opacity of a heatmap over its image
MAX_MAPS = 16  # feature maps drawn per conv layer in an activation figure
MAP_COLUMNS = 8  # feature maps per row inside one layer's block
TITLE_IN = 0.5  # inches above the axes of a kernel figure, for its title
KERNEL_ROWS = 8  # first-layer filters per column group of the RGB kernel figure
GALLERY_COLUMNS = 6


def unit_range(values: np.ndarray) -> np.ndarray:
    """`values` scaled to [0, 1] jointly (a constant array becomes 0)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def leave_title_room(fig: Any) -> None:
    """Axes up to TITLE_IN inches below the top, whatever the figure's height. (Kernel figures
    have a hundred axes or more, where constrained layout would double the drawing time.)"""
    fig.subplots_adjust(top=1 - TITLE_IN / fig.get_figheight())


def bare(ax: Any) -> None:
    """No ticks or frame: the cell shows an image, not a plot."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


# --- 1. kernel weights (paper 9.1) -------------------------------------------------------------


def draw_rgb_kernels(kernel: np.ndarray, layer: str) -> Any:
    """First-layer kernels split by colour channel: a row per filter, columns R, G, B and the RGB
    composite; more than KERNEL_ROWS filters continue in further column groups, side by side.

    kernel: (kh, kw, 3, filters). All weights of the layer share one min-max normalisation, so
    a filter that looks faint really has small weights compared with the others.
    """
    kh, kw, channels, filters = kernel.shape
    assert channels == 3, f"RGB kernels need 3 input channels, got {channels}"
    shown = unit_range(kernel)  # (kh, kw, 3, filters), in [0, 1]
    groups = math.ceil(filters / KERNEL_ROWS)
    rows = math.ceil(filters / groups)
    # Each group: R, G, B, RGB, then a narrow empty column that keeps the next group's filter
    # numbers off this group's composites.
    widths = ([1, 1, 1, 1, 0.5] * groups)[:-1]
    plt = pyplot()
    fig, axes = plt.subplots(rows, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(sum(widths) * 0.6, rows * 0.6 + TITLE_IN))
    leave_title_room(fig)
    for ax in axes.flat:
        bare(ax)
        ax.set_visible(False)
    for f in range(filters):
        row, first = f % rows, 5 * (f // rows)  # the filter's row, and its group's R column
        cells = axes[row, first: first + 4]
        for c, cmap in enumerate(("Reds", "Greens", "Blues")):
            cells[c].imshow(shown[:, :, c, f], cmap=cmap, vmin=0, vmax=1)
        cells[3].imshow(shown[:, :, :, f])  # (kh, kw, 3) as an RGB composite
        cells[0].set_ylabel(f"{f + 1}", rotation=0, ha="right", va="center")
        for ax in cells:
            ax.set_visible(True)
    for first in range(0, len(widths), 5):
        for c, name in enumerate(("R", "G", "B", "RGB")):
            axes[0, first + c].set_title(name)
    fig.suptitle(f"{layer}: {filters} kernels of {kh}×{kw}")
    return fig


def draw_filter_grid(kernel: np.ndarray, layer: str) -> Any:
    """Deeper-layer kernels, one cell per filter: the mean over its input channels.

    kernel: (kh, kw, in_channels, filters). Blue is negative, red positive, on one symmetric
    scale for the whole layer.
    """
    kh, kw, inputs, filters = kernel.shape
    means = kernel.mean(axis=2)  # (kh, kw, filters)
    limit = float(np.abs(means).max()) or 1.0
    columns = math.ceil(math.sqrt(filters))
    rows = math.ceil(filters / columns)
    plt = pyplot()
    fig, axes = plt.subplots(rows, columns, squeeze=False,
                             figsize=(columns * 0.6, rows * 0.6 + TITLE_IN))
    leave_title_room(fig)
    for f, ax in enumerate(axes.flat):
        bare(ax)
        if f < filters:
            ax.imshow(means[:, :, f], cmap="RdBu_r", vmin=-limit, vmax=limit)
        else:
            ax.set_visible(False)
    fig.suptitle(f"{layer}: {filters} kernels of {kh}×{kw}, mean over {inputs} input channels")
    return fig


# --- 2. activation maps (paper 9.2) ------------------------------------------------------------


def most_active(maps: np.ndarray, limit: int = MAX_MAPS) -> np.ndarray:
    """Indices of the `limit` channels of `maps` (h, w, channels) with the highest mean."""
    means = maps.reshape(-1, maps.shape[-1]).mean(axis=0)  # (channels,)
    return np.argsort(-means, kind="stable")[:limit]


def draw_activation_maps(image: np.ndarray, layers: Sequence[tuple[str, np.ndarray]],
                         title: str) -> Any:
    """The image, then one block per conv layer with its most active feature maps.

    image: (S, S, 3) uint8; layers: (name, maps of shape (h, w, channels)) in model order. Each
    map is scaled on its own, so the pattern shows even where activations are small.
    """
    plt = pyplot()
    block_rows = [math.ceil(min(MAX_MAPS, maps.shape[-1]) / MAP_COLUMNS) for _, maps in layers]
    fig = plt.figure(figsize=(MAP_COLUMNS * 0.9, 1.8 + 0.9 * sum(block_rows) + 0.35 * len(layers)))
    top, *blocks = fig.subfigures(len(layers) + 1, 1, height_ratios=[2, *block_rows])
    ax = top.subplots()
    ax.imshow(image)
    bare(ax)
    top.suptitle(title)
    for block, (name, maps), rows in zip(blocks, layers, block_rows, strict=True):
        chosen = most_active(maps)
        axes = block.subplots(rows, MAP_COLUMNS, squeeze=False)
        for k, ax in enumerate(axes.flat):
            bare(ax)
            if k >= len(chosen):
                ax.set_visible(False)
                continue
            channel = chosen[k]
            ax.imshow(maps[:, :, channel], cmap="viridis")
            ax.set_title(f"#{channel + 1}", fontsize=7, pad=2)
        block.suptitle(f"{name}: {len(chosen)} most active of {maps.shape[-1]} maps", fontsize=9)
    return fig


# --- 3 and 4. heatmaps over images (paper 9.3, figure 12) ---------------------------------------


def draw_heatmap_grid(images: np.ndarray, columns: Sequence[tuple[str, np.ndarray]],
                      row_labels: Sequence[str], title: str = "") -> Any:
    """Rows = images; column 0 = the image, then one heatmap overlay per (name, heatmaps).

    images: (N, S, S, 3) uint8; each heatmaps array: (N, S, S) in [0, 1]. A heatmap that is zero
    everywhere (no positive evidence for the class at that layer) is marked, not left blank.
    """
    n = len(images)
    plt = pyplot()
    fig, axes = plt.subplots(n, 1 + len(columns), squeeze=False, layout="constrained",
                             figsize=((1 + len(columns)) * CELL_IN, n * CELL_IN + 0.5))
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j, (_name, heat) in enumerate(columns, start=1):
            axes[i, j].imshow(images[i])
            axes[i, j].imshow(heat[i], cmap="jet", alpha=HEAT_ALPHA, vmin=0, vmax=1)
            if float(heat[i].max()) <= 0:
                axes[i, j].text(0.5, 0.5, "no positive\nevidence", transform=axes[i, j].transAxes,
                                ha="center", va="center", fontsize=7, color="white")
    axes[0, 0].set_title("image")
    for j, (name, _heat) in enumerate(columns, start=1):
        axes[0, j].set_title(name)
    for ax in axes.flat:
        bare(ax)
    if title:
        fig.suptitle(title)
    return fig


# --- 5. error gallery --------------------------------------------------------------------------


def draw_gallery(images: np.ndarray, labels: Sequence[str]) -> Any:
    """Misclassified images in a grid, in the order given, each with its label text below."""
    n = len(images)
    columns = min(GALLERY_COLUMNS, n)
    rows = math.ceil(n / columns)
    plt = pyplot()
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(columns * CELL_IN, rows * (CELL_IN + 0.45)))
    for k, ax in enumerate(axes.flat):
        bare(ax)
        if k >= n:
            ax.set_visible(False)
            continue
        ax.imshow(images[k])
        ax.set_xlabel(labels[k], fontsize=7)
    return fig
