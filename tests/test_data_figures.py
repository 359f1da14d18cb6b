"""The pictures that replaced tables of file names: duplicate strips, the search's progress."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from chimuf.core.hyperparameters import NAMES, PAPER_BEST
from chimuf.core.results import Trial
from chimuf.ml.plots.common import literal, pyplot
from chimuf.ml.plots.label_plots import STRIP_MAX, Strip, draw_strips, pack
from chimuf.ml.plots.tuning_plots import draw_against_hyperparameters, draw_progress


def visible(figure) -> list:
    return [ax for ax in figure.axes if ax.get_visible()]


def test_text_drawn_on_figures_keeps_dollar_signs_literal():
    assert literal("$x$ muffin") == r"\$x\$ muffin"
    figure = draw_strips([Strip("group 1", np.zeros((2, 8, 8, 3), np.uint8), ["$x$ · train", "b · test"])])
    assert visible(figure)[0].get_title(loc="left") == "group 1"
    assert visible(figure)[0].get_xlabel() == r"\$x\$ · train"
    pyplot().close(figure)


def test_duplicate_strips_pack_pairs_three_to_a_row_and_never_cut_a_group():
    pair = Strip("group 1, near", np.zeros((2, 8, 8, 3), np.uint8), ["a · train", "b · test"],
                 cross_class=True)
    big = Strip("group 2, exact", np.zeros((STRIP_MAX, 8, 8, 3), np.uint8),
                [f"a · train {i}" for i in range(STRIP_MAX)], more=3)
    assert [len(row) for row in pack([pair, pair, pair, pair])] == [6, 2]
    assert [len(row) for row in pack([pair, big, pair])] == [2, 6, 2]
    figure = draw_strips([pair, big])
    shown = visible(figure)
    assert len(shown) == 2 + STRIP_MAX
    assert shown[0].get_title(loc="left") == "group 1, near" and shown[1].get_title(loc="left") == ""
    assert shown[-1].get_xlabel().endswith("(+3 more)")
    pyplot().close(figure)


def trials(scores: list[float | None]) -> list[Trial]:
    return [Trial(f"{i:02d}", "COMPLETED" if s is not None else "FAILED",
                  dataclasses.replace(PAPER_BEST, dense_units=32 * (i + 1)), s, 2, 1.0, [])
            for i, s in enumerate(scores)]


def test_progress_figure_draws_each_trial_and_the_best_so_far_and_marks_failures():
    figure = draw_progress(trials([0.6, None, 0.55, 0.7]), "val_accuracy")
    (ax,) = figure.axes
    dots, best, failed = ax.lines
    assert list(dots.get_xdata()) == [1, 3, 4] and list(dots.get_ydata()) == [0.6, 0.55, 0.7]
    assert list(best.get_ydata()) == [0.6, 0.6, 0.7]
    assert list(failed.get_xdata()) == [2]
    pyplot().close(figure)


def test_objective_against_each_hyperparameter_has_one_panel_per_name():
    figure = draw_against_hyperparameters(trials([0.6, None, 0.7]), "val_accuracy")
    panels = visible(figure)
    assert len(panels) == len(NAMES)
    dense = panels[NAMES.index("dense_units")]
    assert list(dense.lines[0].get_xdata()) == [32, 96]  # the failed trial has no objective
    assert list(dense.lines[1].get_xdata()) == pytest.approx([96])  # the best, ringed
    pyplot().close(figure)
