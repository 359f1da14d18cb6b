"""Figures of the hyperparameter search (paper section 6): how it went, and what mattered.

Drawn from the TuneOutcome's trials alone (no model is loaded), so a table of trials becomes two
pictures: the objective of each trial in the order the search ran them, with the best so far as
a line, and the objective against each hyperparameter. Failed trials have no objective; they are
marked on the first figure's axis and left out of the second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from chimuf.core.hyperparameters import LABEL, NAMES
from chimuf.core.results import Trial
from chimuf.ml.plots.common import literal, pyplot


def scored(trials: Sequence[Trial]) -> list[tuple[int, Trial]]:
    """(position in trial order, 1-based, trial) of every trial with an objective."""
    return [(i, t) for i, t in enumerate(trials, start=1) if t.score is not None and t.score == t.score]


def draw_progress(trials: Sequence[Trial], objective: str) -> Any:
    """Each trial's objective in trial order (dots), the best so far (a step line), failed
    trials as crosses on the bottom axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0), layout="constrained")
    points = scored(trials)
    xs, ys = [i for i, _ in points], [float(t.score) for _, t in points]
    best, running = [], -math.inf
    for y in ys:
        running = max(running, y)
        best.append(running)
    ax.plot(xs, ys, "o", color="C0", label=f"{literal(objective)} of the trial")
    ax.step(xs, best, where="post", color="C1", label="best so far")
    failed = sorted(set(range(1, len(trials) + 1)) - set(xs))
    if failed:
        low = min(ys) if ys else 0.0
        ax.plot(failed, [low] * len(failed), "x", color="C3", label="failed")
    ax.set_xlabel("trial, in the order the search ran it")
    ax.set_ylabel(literal(objective))
    ax.set_xticks(range(1, len(trials) + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def draw_against_hyperparameters(trials: Sequence[Trial], objective: str) -> Any:
    """One panel per hyperparameter: the objective of every scored trial against its value;
    the best trial ringed."""
    points = [t for _, t in scored(trials)]
    plt = pyplot()
    columns = 3
    rows = math.ceil(len(NAMES) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.5, 2.3 * rows), layout="constrained",
                             sharey=True, squeeze=False)
    best = max(points, key=lambda t: float(t.score), default=None)
    for ax, name in zip(axes.flat, NAMES, strict=False):
        ax.plot([t.hyperparameters[name] for t in points], [float(t.score) for t in points], "o",
                color="C0", alpha=0.8)
        if best is not None:
            ax.plot([best.hyperparameters[name]], [float(best.score)], "o", mfc="none", mec="C1",
                    ms=11, mew=1.5)
        ax.set_xlabel(LABEL[name], fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(literal(objective))
    for ax in list(axes.flat)[len(NAMES):]:
        ax.set_visible(False)
    return fig
