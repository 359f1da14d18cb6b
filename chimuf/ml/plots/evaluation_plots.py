"""Figures of the evaluation (paper section 7): confusion matrix, ROC curve, precision-recall
curve, reliability diagram."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from chimuf.core.results import DEFAULT_THRESHOLD
from chimuf.ml.plots.common import pyplot
from chimuf.stats import metrics


def draw_confusion_matrix(cm: np.ndarray, classes: list[str], accuracy: float) -> Any:
    """Counts and row shares; rows = true class, columns = predicted class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(cm, cmap="Blues")
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (2, 2), each row sums to 1
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, f"{cm[i, j]}\n{shares[i, j]:.1%}", ha="center", va="center",
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], labels=classes)
    ax.set_yticks([0, 1], labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {accuracy:.3f}")
    return fig


def draw_roc(labels: np.ndarray, probabilities: np.ndarray, auc: float, threshold: float,
             classes: list[str]) -> Any:
    curve = metrics.roc_curve(labels, probabilities)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot(curve.false_positive_rate, curve.true_positive_rate, label=f"final model (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC = 0.5)")
    positive, negative = labels == 1, labels == 0

    def point(predicted: np.ndarray) -> tuple[float, float]:  # (FPR, TPR)
        return share(predicted[negative]), share(predicted[positive])

    finish(ax, probabilities, threshold, point, f"false positive rate ({classes[0]} called {classes[1]})",
           f"true positive rate ({classes[1]} found)", "lower right")
    return fig


def draw_precision_recall(labels: np.ndarray, probabilities: np.ndarray, average_precision: float,
                          threshold: float, classes: list[str]) -> Any:
    """Precision against recall of classes[1]; the flat line is what guessing scores (its share),
    so an imbalanced test split cannot flatter the curve the way it flatters ROC."""
    curve = metrics.precision_recall_curve(labels, probabilities)
    guess = share(labels == 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.step(curve.recall, curve.precision, where="post",
            label=f"final model (AP = {average_precision:.3f})")
    ax.plot([0, 1], [guess, guess], linestyle="--", color="grey", label=f"chance (AP = {guess:.3f})")
    positive = labels == 1

    def point(predicted: np.ndarray) -> tuple[float, float]:  # (recall, precision)
        return share(predicted[positive]), share(positive[predicted])

    finish(ax, probabilities, threshold, point, f"recall ({classes[1]} found)",
           f"precision (called {classes[1]} and right)", "lower left")
    return fig


def share(flags: np.ndarray) -> float:
    """The share of True; NaN for no flags at all."""
    return float(flags.mean()) if len(flags) else float("nan")


def finish(ax: Any, probabilities: np.ndarray, threshold: float,
           point: Callable[[np.ndarray], tuple[float, float]], xlabel: str, ylabel: str, legend: str) -> None:
    """Dots at threshold 0.5 and at the validation threshold, labels, unit axes, legend."""
    for t, marker in ((DEFAULT_THRESHOLD, "o"), (threshold, "s")):
        x, y = point(probabilities > t)
        ax.plot([x], [y], marker=marker, linestyle="none", label=f"threshold {t:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc=legend)


def draw_reliability(reliability: metrics.Calibration, classes: list[str]) -> Any:
    """Top: mean predicted probability vs observed share per bin; bottom: images per bin."""
    bins = reliability.bins
    centres = np.array([(b.low + b.high) / 2 for b in bins])
    width = bins[0].high - bins[0].low
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 4.8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b.count]
    top.plot([b.mean_probability for b in filled], [b.observed_fraction for b in filled], marker="o",
             label=f"final model (ECE = {reliability.expected_calibration_error:.3f})")
    top.set_ylabel(f"observed share of {classes[1]}")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left")
    bottom.bar(centres, [b.count for b in bins], width=width * 0.9, color="tab:blue")
    bottom.set_xlabel(f"predicted P({classes[1]})")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    return fig
