"""Figures of trainings: accuracy and loss per epoch (paper figures 3-8) and per fold (figure 11).

Each function draws from the histories the fit loop recorded and writes one PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chimuf.core.results import EpochRecord, FoldOutcome, TrainingOutcome
from chimuf.ml.plots.common import pyplot, save_figure


def plot_curves(history: list[EpochRecord], best_epoch: int, title: str, path: Path) -> Path:
    """Accuracy and loss per epoch, training and validation, the kept epoch marked (figs 3-5)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [r.epoch for r in history]
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(epochs, [getattr(r, metric) for r in history], marker="o", ms=3, label="training")
        ax.plot(epochs, [getattr(r, f"val_{metric}") for r in history], marker="o", ms=3, label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(f"Accuracy and loss of {title}")
    return save_figure(figure, path)


def plot_comparison(without: TrainingOutcome, with_aug: TrainingOutcome, title: str, path: Path) -> Path:
    """Validation (solid) and training (dashed) curves without vs with augmentation (figs 6-8)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in ((axes[0], "accuracy"), (axes[1], "loss")):
        for outcome, colour, label in ((without, "tab:blue", "without"), (with_aug, "tab:orange", "with")):
            epochs = [r.epoch for r in outcome.history]
            ax.plot(epochs, [getattr(r, f"val_{metric}") for r in outcome.history], color=colour,
                    marker="o", ms=3, label=f"validation, {label} augmentation")
            ax.plot(epochs, [getattr(r, metric) for r in outcome.history], color=colour,
                    linestyle="--", alpha=0.6, label=f"training, {label} augmentation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.suptitle(f"Impact of data augmentation on {title}")
    return save_figure(figure, path)


def draw_folds(folds: list[FoldOutcome]) -> Any:
    """Paper figure 11. Left: per fold, validation accuracy (solid) and loss (dashed) per epoch.
    Right: the final accuracy and loss of each fold, with their means."""
    plt = pyplot()
    fig, (curves, final) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    curves_loss = curves.twinx()
    for i, fold in enumerate(folds):
        colour = f"C{i % 10}"
        epochs = [r.epoch for r in fold.history]
        curves.plot(epochs, [r.val_accuracy for r in fold.history], color=colour, linestyle="-",
                    label=f"fold {fold.fold}")
        curves_loss.plot(epochs, [r.val_loss for r in fold.history], color=colour, linestyle="--")
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation accuracy (solid)")
    curves_loss.set_ylabel("validation loss (dashed)")
    curves.legend(loc="center right", fontsize=7)

    numbers = [f.fold for f in folds]
    final_loss = final.twinx()
    final.plot(numbers, [f.accuracy for f in folds], marker="o", linestyle="-", color="C0",
               label="accuracy")
    final_loss.plot(numbers, [f.loss for f in folds], marker="s", linestyle="--", color="C3", label="loss")
    final.axhline(float(np.mean([f.accuracy for f in folds])), color="C0", linewidth=0.8, alpha=0.5)
    final_loss.axhline(float(np.mean([f.loss for f in folds])), color="C3", linewidth=0.8, alpha=0.5,
                       linestyle="--")
    final.set_xticks(numbers)
    final.set_xlabel("fold")
    final.set_ylabel("accuracy (solid)", color="C0")
    final_loss.set_ylabel("loss (dashed)", color="C3")
    fig.tight_layout()
    return fig
