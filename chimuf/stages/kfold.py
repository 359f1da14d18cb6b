"""n-fold cross-validation of the final architecture (paper section 8).

The paper splits its data into n equal folds, trains the model n times, each time holding one
fold out for validation, and reports accuracy and loss per fold with their average. Here the
folds are made from train+validation only, so the test split stays untouched by every model:

    train + validation paths → chimuf.data.split.fold_assignments (stratified; near-duplicate groups whole)
      → for fold i: the "tuned" model with the best hyperparameters, trained with augmentation
        on the other folds (chimuf.ml.training.fit: same early stopping, resumable), then evaluated
        on fold i without augmentation → FoldOutcome
        and its held-out images scored by that model: their out-of-fold probabilities
      → mean and sample standard deviation of accuracy and loss; figure like paper fig. 11
      → the out-of-fold accuracy over every held-out image, with its Wilson interval (a
        proportion of all train+validation images: far tighter than one test split's)
      → every train+validation image's out-of-fold prediction (Predictions, and
        kfold/oof_predictions.csv for people): one honest probability per image, from a model
        that never saw it, which the labels stage reads to find suspect labels

In the paper, early stopping watched the held-out fold, which costs epochs and makes the fold
scores optimistic (the fold that scores a model also chose its epoch). By default here every fold
trains for the number of epochs the final model's early stopping kept, with no stopping, and is
scored with its last epoch's weights; `kfold.early_stopping = true` is the paper's way.

Each fold is a unit of the stage (ctx.unit), run in a pool as the trainings are (chimuf.ml.training.pool,
`train.workers`): a finished fold is not trained again when the stage resumes. A fold that fails
(diverged, out of memory, its worker killed) is recorded as FAILED with its error and the other
folds go on; it is not memoised, so a rerun tries it again (from its last checkpoint). If every
fold fails, the stage stops.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import ModelError, StageError
from chimuf.core.files import atomic_write_text, csv_text
from chimuf.core.hyperparameters import Hyperparameters
from chimuf.core.results import DEFAULT_THRESHOLD, Figure, FoldOutcome, KFoldOutcome, Predictions
from chimuf.data.cache import load_images
from chimuf.data.split import fold_assignments
from chimuf.ml.architectures.models import resolve_precision, save_model, seeded_model
from chimuf.ml.modelfiles.predictor import predict_rows
from chimuf.ml.plots.common import save_figure as save_png
from chimuf.ml.plots.training_plots import draw_folds
from chimuf.ml.training import fit as fitting
from chimuf.ml.training.fit import UNMONITORED, Monitoring, Stopping
from chimuf.ml.training.pipeline import make_dataset
from chimuf.ml.training.pool import Unit, UnitFailure, run_units
from chimuf.stats import intervals

if TYPE_CHECKING:
    from chimuf.core.config import AugmentConfig, KFoldConfig, TrainConfig
    from chimuf.core.engine import StageContext
    from chimuf.core.results import AuditOutcome, CacheOutcome, SplitOutcome
    from chimuf.data.cache import ImageSet


@dataclass
class FoldRun:
    """One fold's unit of work (units/foldN.json): its outcome, and its held-out images scored
    by the model trained without them."""

    outcome: FoldOutcome
    paths: list[str] = field(default_factory=list)  # the held-out images, in fold order
    probabilities: list[float] = field(default_factory=list)  # P(classes[1]) of each


def run_kfold(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, audit: AuditOutcome,
              hyperparameters: Hyperparameters, cfg: KFoldConfig, train_cfg: TrainConfig,
              augment: AugmentConfig, seed: int, monitor: Monitoring = UNMONITORED,
              final_epoch: int = 0, confidence: float = 0.95) -> KFoldOutcome:
    """Train and score the tuned architecture on each fold of train+validation.

    Without `cfg.early_stopping`, every fold trains for `cfg.epochs`, else for `final_epoch` (the
    epoch the final model's early stopping kept), and is scored on its held-out fold with the
    weights of its last epoch: the fold that scores a model has not also chosen its epoch.
    `confidence` is the level of the out-of-fold accuracy's interval (`evaluate.confidence`).
    """
    images = load_images(cache)
    held_out = make_folds(split, audit, cfg.folds, seed)
    if cfg.early_stopping:
        epochs, stopping = cfg.epochs or train_cfg.epochs, Stopping.of(train_cfg)
    else:
        epochs, stopping = cfg.epochs or max(1, final_epoch), Stopping.fixed()
        ctx.console.info(f"  every fold trains {epochs} epochs (no early stopping on the scored fold)")
    units, sizes = [], []
    for number, paths in enumerate(held_out, start=1):
        others = [p for i, fold in enumerate(held_out, start=1) if i != number for p in fold]
        units.append(Unit(f"fold{number}", functools.partial(
            fold_unit, number=number, cache=cache, train_paths=others, held_out_paths=paths,
            hyperparameters=hyperparameters, train_cfg=train_cfg, augment=augment, seed=seed, epochs=epochs,
            stopping=stopping)))
        sizes.append((len(others), len(paths)))
    outcomes = run_units(ctx, units, FoldRun, train_cfg.workers, train_cfg.threads_per_unit, monitor,
                         recorded=fold_failures)
    runs = [fold_run(ctx, number, outcome, *size)
            for number, (outcome, size) in enumerate(zip(outcomes, sizes, strict=True), start=1)]
    for run in runs:
        ctx.console.info(fold_line(run.outcome, cfg.folds))

    folds = [run.outcome for run in runs]

    completed = [f for f in folds if f.status == "COMPLETED"]
    if not completed:
        raise StageError(f"every one of the {cfg.folds} folds failed; the first error: {folds[0].error}")
    accuracies = np.array([f.accuracy for f in completed])
    losses = np.array([f.loss for f in completed])
    predictions, fold_of = out_of_fold(runs, images, list(split.classes))
    predictions_csv = ctx.dir / "oof_predictions.csv"
    atomic_write_text(predictions_csv, oof_table(predictions, fold_of))
    right = sum(item.true_id == item.predicted_id for item in predictions.items())
    return KFoldOutcome(
        folds=folds,
        mean_accuracy=float(accuracies.mean()),
        std_accuracy=sample_std(accuracies),
        mean_loss=float(losses.mean()),
        std_loss=sample_std(losses),
        figure=save_figure(ctx, folds),
        early_stopping=cfg.early_stopping,
        epochs=epochs,
        predictions=predictions,
        predictions_csv=ctx.rel(predictions_csv),
        fold_of=fold_of,
        oof_accuracy=right / len(predictions) if len(predictions) else math.nan,
        oof_accuracy_interval=intervals.wilson(right, len(predictions), confidence),
    )


# --- 1. the folds ------------------------------------------------------------------------------


def make_folds(split: SplitOutcome, audit: AuditOutcome, folds: int, seed: int) -> list[list[str]]:
    """Held-out paths of each fold: train+validation, stratified, duplicate groups never cut; in
    content order (SHA-256, then path), as the split's lists, so a layout's names change nothing."""
    content = {r.path: (r.sha256, r.path) for r in audit.files}
    paths = sorted(split.train + split.validation, key=content.__getitem__)
    label_of = {r.path: split.classes.index(r.label) for r in audit.files}
    labels = [label_of[p] for p in paths]
    groups = [*split.groups, *(g.files for g in audit.duplicate_groups)]
    assignment = fold_assignments(paths, labels, groups, folds, seed, key=content.__getitem__)
    return [[p for p, a in zip(paths, assignment, strict=True) if a == fold] for fold in range(folds)]


# --- 2. one fold -------------------------------------------------------------------------------

# What a fold may fail of without the study failing: a diverged training (StageError from
# chimuf.ml.training.fit), a model that cannot be built or saved, TensorFlow running out of memory.
# A stop signal (Interrupted) is none of these, and ends the study as it should.
def fold_failures() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (StageError, ModelError, tf.errors.OpError, MemoryError)


def fold_run(ctx: StageContext, number: int, outcome: FoldRun | UnitFailure, n_train: int,
             n_validation: int) -> FoldRun:
    """The fold's run as the pool gave it; FAILED with its error if it failed of a failure folds
    may have (or its worker died: a rerun resumes it); any other failure stops the stage."""
    if isinstance(outcome, FoldRun):
        return outcome
    if outcome.fatal:
        raise StageError(f"fold {number} failed: {outcome.error}")
    ctx.console.warn(f"fold {number} failed: {outcome.error}")
    nan = float("nan")
    return FoldRun(FoldOutcome(fold=number, status="FAILED", n_train=n_train, n_validation=n_validation,
                               accuracy=nan, loss=nan, epochs_run=0, wall_s=outcome.wall_s,
                               error=outcome.error))


def fold_unit(ctx: StageContext, monitor: Monitoring, *, number: int, cache: CacheOutcome,
              train_paths: list[str], held_out_paths: list[str], hyperparameters: Hyperparameters,
              train_cfg: TrainConfig, augment: AugmentConfig, seed: int, epochs: int,
              stopping: Stopping) -> FoldRun:
    """One fold as a unit of the pool: its images memory-mapped from the cache, then train_fold."""
    return train_fold(ctx, number, load_images(cache), train_paths, held_out_paths, hyperparameters,
                      train_cfg, augment, seed, epochs, monitor, stopping)


def train_fold(ctx: StageContext, number: int, images: ImageSet, train_paths: list[str],
               held_out_paths: list[str], hyperparameters: Hyperparameters, train_cfg: TrainConfig,
               augment: AugmentConfig, seed: int, epochs: int,
               monitor: Monitoring = UNMONITORED, stopping: Stopping | None = None) -> FoldRun:
    """Fit on the other folds (augmented), then score the best weights on the held-out fold."""
    # 1. The final model's architecture and starting weights (the trainings' seed).
    model = seeded_model("tuned", images.images.shape[1], hyperparameters,
                         resolve_precision(train_cfg.precision), train_cfg.learning_rate, seed)

    # 2. Train, resumably, in the fold's own work folder.
    train_rows, held_rows = images.rows(train_paths), images.rows(held_out_paths)
    name = f"fold{number}"
    result = fitting.fit(model, (images.images[train_rows], images.labels[train_rows]),
                         (images.images[held_rows], images.labels[held_rows]), train_cfg, augment, seed,
                         ctx.dir / name, ctx.console, name, max_epochs=epochs,
                         log=monitor.log(ctx.name, name), callbacks=monitor.callbacks,
                         eta=monitor.eta(ctx.name, name), stopping=stopping)

    # 3. Score the kept (best) weights on the held-out fold as it is, not augmented.
    held = make_dataset(images.images, images.labels, held_rows, train_cfg.batch_size, shuffle=False,
                        seed=seed)
    scores = model.evaluate(held, verbose=0, return_dict=True)
    model_path = save_model(model, ctx.dir / f"{name}.keras")  # a member of the fold ensemble
    outcome = FoldOutcome(fold=number, status="COMPLETED", n_train=len(train_rows),
                          n_validation=len(held_rows), accuracy=float(scores["accuracy"]),
                          loss=float(scores["loss"]), epochs_run=result.epochs_run,
                          wall_s=result.wall_s, history=result.history, model_path=ctx.rel(model_path))

    # 4. The same weights' probability for every held-out image: its out-of-fold prediction.
    probabilities = predict_rows(model, images, held_rows, train_cfg.batch_size)
    return FoldRun(outcome, list(held_out_paths), probabilities.tolist())


def fold_line(fold: FoldOutcome, folds: int) -> str:
    if fold.status != "COMPLETED":
        return f"  fold {fold.fold}/{folds} failed: {fold.error}"
    return (f"  fold {fold.fold}/{folds}: accuracy {fold.accuracy:.3f}, loss {fold.loss:.3f} on "
            f"{fold.n_validation} held-out images after {fold.epochs_run} epochs")


def sample_std(values: np.ndarray) -> float:
    """Standard deviation with n − 1 in the denominator; NaN (undefined) for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


# --- 3. out-of-fold predictions ----------------------------------------------------------------


def out_of_fold(runs: list[FoldRun], images: ImageSet, classes: list[str]) -> tuple[Predictions, list[int]]:
    """Every held-out image of a completed fold, in path order, with its fold (1-based)."""
    scored = sorted((path, probability, run.outcome.fold) for run in runs
                    for path, probability in zip(run.paths, run.probabilities, strict=True))
    paths = [path for path, _, _ in scored]
    labels = images.labels[images.rows(paths)].tolist() if paths else []
    predictions = Predictions(classes, DEFAULT_THRESHOLD, paths, [int(y) for y in labels],
                              [probability for _, probability, _ in scored])
    return predictions, [fold for _, _, fold in scored]


def oof_table(predictions: Predictions, fold_of: list[int]) -> str:
    """CSV: path, given label, fold, P(classes[1]) and P(given label), to 8 decimals."""
    return csv_text(["path", "given_label", "fold", "probability", "probability_given"],
                    ([item.path, predictions.classes[item.true_id], fold, f"{item.probability:.8f}",
                      f"{item.probability_true:.8f}"]
                     for item, fold in zip(predictions.items(), fold_of, strict=True)))


# --- 4. the figure (paper fig. 11) -------------------------------------------------------------


def save_figure(ctx: StageContext, folds: list[FoldOutcome]) -> Figure | None:
    completed = [f for f in folds if f.status == "COMPLETED"]
    if not completed:
        return None
    path = save_png(draw_folds(completed), ctx.dir / "kfold.png")
    return Figure(ctx.rel(path), f"{len(folds)}-fold cross-validation: held-out accuracy (solid) and "
                                 "loss (dashed) per epoch for each fold (left), and of each fold's "
                                 "kept model with their means (right)")
