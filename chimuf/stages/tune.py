"""Hyperparameter search over the model-3 family (paper section 6): Keras Tuner, Bayesian.

The paper searched filters per conv block, dense units and two dropout rates with Keras Tuner's
BayesianOptimization, maximising `val_accuracy`, and found 16 / 96 / 192 filters, 96 units and
dropouts 0.05 and 0.4. Here the ranges come from TuneConfig ([min, max, step]); each trial trains
a "tuned" model (chimuf.ml.architectures.models) with augmentation and the trainings' early stopping.

    TuneConfig ranges → the search space (chimuf.tuning.space), declared as each trial is built
    cache rows → each epoch's data as the trainings make it (chimuf.ml.training.fit.epoch_datasets)
    make_tuner → seeded Bayesian oracle + SearchTuner (chimuf.tuning.search) in ctx.dir/search/
    search → one line per trial; per-epoch history of each trial in ctx.dir/trials/
    → TuneOutcome: search space, every trial (failed ones with their error), best values, and
      two figures (chimuf.ml.plots.tuning_plots): the objective per trial with the best so far, and
      the objective against each hyperparameter

Resuming: the tuner's project folder is kept (`overwrite=False`), so a rerun reloads the oracle,
runs again from its first epoch a trial that was cut off, and runs only the trials still missing.
Each trial reseeds Keras from (seed, trial number), and the oracle's Bayesian step reseeds from the
same pair, so a resumed search proposes and scores the same trials as an uninterrupted one.

Failures: an exception inside a trial marks it FAILED with its error and the search goes on
(Keras Tuner's own machinery); MAX_CONSECUTIVE_FAILURES failed trials in a row stop the stage.
A stop signal (chimuf.core.errors.Interrupted) is never taken for a failed trial: it ends the search.

On several machines: with a `chief` address the stage serves the oracle (chimuf.tuning.chief) and
workers (`work_for_chief`, run by `chimuf tune-worker`) train the trials; each worker reports every
epoch to the chief, so the trials table comes out as a local search's, plus the worker that ran
each trial. Trials are then proposed as results arrive, so which trials a distributed search tries
depends on timing.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core.console import format_seconds
from chimuf.core.errors import Interrupted, StageError
from chimuf.core.results import EpochRecord, Figure, Trial, TuneOutcome
from chimuf.data.cache import load_images
from chimuf.ml.architectures.models import resolve_precision, training_strategy
from chimuf.ml.plots.common import save_figure
from chimuf.ml.plots.tuning_plots import draw_against_hyperparameters, draw_progress
from chimuf.ml.training.fit import (
    UNMONITORED,
    Monitoring,
    Stopping,
    class_weights,
    describe,
    epoch_datasets,
    validation_augmentation,
)
from chimuf.tuning.protocol import CHIEF_ID, Address, ChiefLost, client_channel, client_timeout, tuner_role
from chimuf.tuning.pruning import MedianStopping, epochs_saved
from chimuf.tuning.space import search_space

# chimuf.tuning.search, chimuf.tuning.chief and chimuf.ml.training.callbacks import Keras Tuner or Keras
# when imported: the functions below import them when they run.

if TYPE_CHECKING:
    from chimuf.core.config import AugmentConfig, TrainConfig, TuneConfig
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.core.plan import StudyClock
    from chimuf.core.results import CacheOutcome, SplitOutcome
    from chimuf.data.cache import ImageSet
    from chimuf.tuning.search import Model3Family, SearchTuner, TrialWatch

OBJECTIVE = "val_accuracy"
MAX_CONSECUTIVE_FAILURES = 3
# Keras Tuner's default is 3 random trials per dimension (18 here) before the Gaussian process
# takes over, more than the whole budget of the paper's protocol (10 trials), which would make
# the "Bayesian" search a random one. A third of the budget, at least 2, is random instead.
RANDOM_SHARE = 1 / 3


def run_tuning(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: TuneConfig,
               train_cfg: TrainConfig, augment: AugmentConfig, seed: int,
               chief: Address | None = None, monitor: Monitoring = UNMONITORED) -> TuneOutcome:
    """Run (or continue) the search; every trial, its history and the best hyperparameters.

    With `chief`, this process serves the search at that address and workers run the trials.
    With `monitor.tensorboard_dir`, each trial is logged there (tune/trial_<id>/) with the HParams
    view at tune/.
    """
    from chimuf.tuning.search import collect_trials, last_error, quiet_keras_tuner

    started = time.monotonic()
    hypermodel = trial_hypermodel(cfg, cache.image_size, train_cfg)

    # 1-3. The tuner, reloaded from ctx.dir/search when a previous attempt left one; the search.
    board = None if monitor.tensorboard_dir is None else monitor.tensorboard_dir / ctx.name
    with quiet_keras_tuner():
        if chief is None:
            tuner = new_tuner(hypermodel, cfg, ctx.dir, seed, ctx.console,
                              watch=trial_watch(cfg, train_cfg, len(split.train), board, monitor.clock))
            start_board(board, tuner.oracle, cfg)
            say_continuing(tuner.oracle, cfg, ctx.console)
            run_search(tuner, search_data(load_images(cache), split, cfg, train_cfg, augment, seed))
        else:
            tuner = serve_as_chief(ctx, hypermodel, cfg, seed, chief)

    # 4. The trials table and the winner.
    trials = collect_trials(tuner.oracle, ctx.dir)
    completed = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        raise StageError(f"tuning finished with no completed trial out of {len(trials)}; the last "
                         f"error: {last_error(tuner.oracle)}")
    best = max(completed, key=lambda t: t.score)  # first of equals: the earliest trial
    earliest_stop = train_cfg.start_from_epoch + 1 + train_cfg.patience  # early stopping's first chance
    saved = epochs_saved([t.epochs for t in trials if t.pruned], cfg.epochs, earliest_stop)
    progress, against = save_tuning_figures(ctx, trials)
    return TuneOutcome(
        objective=OBJECTIVE,
        max_trials=cfg.max_trials,
        search_space=search_space(cfg),
        trials=trials,
        best_hyperparameters=best.hyperparameters,
        best_score=float(best.score),
        wall_s=time.monotonic() - started,
        pruning=(f"median stopping rule after {cfg.prune_after} epochs" if cfg.prune else "off"),
        epochs_saved=list(saved),
        progress_figure=progress,
        hyperparameter_figure=against,
    )


def save_tuning_figures(ctx: StageContext, trials: list[Trial]) -> tuple[Figure, Figure]:
    """The search as two pictures: its progress, and the objective against each hyperparameter."""
    progress = save_figure(draw_progress(trials, OBJECTIVE), ctx.dir / "trials.png")
    against = save_figure(draw_against_hyperparameters(trials, OBJECTIVE), ctx.dir / "hyperparameters.png")
    return (Figure(ctx.rel(progress), f"{OBJECTIVE} of each of the {len(trials)} trials in the order the "
                                      "search ran them (dots), the best so far (line); failed trials "
                                      "as crosses."),
            Figure(ctx.rel(against), f"{OBJECTIVE} of each completed trial against each of the six "
                                     "hyperparameters; the best trial ringed."))


def start_board(board: Path | None, oracle: Any, cfg: TuneConfig) -> None:
    """The HParams view's columns; a search that starts afresh starts its logs afresh."""
    if board is None:
        return
    from chimuf.ml.training.tensorboard import write_hparams_config

    if not oracle.trials and board.exists():
        shutil.rmtree(board)
    write_hparams_config(board, {d.name: d.values for d in search_space(cfg)})


def say_continuing(oracle: Any, cfg: TuneConfig, console: Console) -> None:
    finished = sum(t.status in ("COMPLETED", "FAILED") for t in oracle.trials.values())
    if finished:
        console.info(f"  continuing the search: {finished} of {cfg.max_trials} trials already done")


# --- the tuner ---------------------------------------------------------------------------------


def trial_hypermodel(cfg: TuneConfig, image_size: int, train_cfg: TrainConfig) -> Model3Family:
    """The model-3 family over `cfg`'s ranges, each trial trained by `fit_trial`."""
    from chimuf.tuning.search import Model3Family

    return Model3Family(cfg, image_size, resolve_precision(train_cfg.precision), train_cfg.learning_rate,
                        fit=fit_trial)


def new_tuner(hypermodel: Model3Family, cfg: TuneConfig, directory: Path, seed: int, console: Console,
              oracle_class: type | None = None, watch: TrialWatch | None = None) -> SearchTuner:
    """The stage's tuner in `directory` (a local search, a chief's or a worker's)."""
    from chimuf.tuning.search import SeededBayesianOracle, TrialWatch, make_tuner

    return make_tuner(hypermodel, directory, objective=OBJECTIVE, max_trials=cfg.max_trials,
                      random_trials=max(2, round(cfg.max_trials * RANDOM_SHARE)),
                      max_failures=MAX_CONSECUTIVE_FAILURES, seed=seed, console=console,
                      strategy=training_strategy(), oracle_class=oracle_class or SeededBayesianOracle,
                      watch=watch or TrialWatch())


def trial_watch(cfg: TuneConfig, train_cfg: TrainConfig, n_train: int, board: Path | None,
                clock: StudyClock | None = None) -> TrialWatch:
    """Around each trial: its TensorBoard folder, its progress, the pruning rule when on, and the
    study's clock."""
    from chimuf.tuning.search import TrialWatch

    return TrialWatch(board_dir=board, images_per_epoch=n_train,
                      steps_per_epoch=math.ceil(n_train / train_cfg.batch_size), max_epochs=cfg.epochs,
                      pruner=MedianStopping(cfg.prune_after) if cfg.prune else None, clock=clock)


def fit_trial(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Train one trial's model: plain `model.fit` with the search's data and callbacks."""
    return model.fit(*args, **kwargs)


# --- the data ----------------------------------------------------------------------------------


@dataclass
class SearchData:
    """What every trial's `fit` gets: E epochs of batches back to back, and their step counts."""

    train: Any  # tf.data: augmented training batches, epochs 1..E
    validation: Any  # tf.data: validation batches, epochs 1..E
    steps: int
    validation_steps: int
    epochs: int
    callbacks: list[Any]
    class_weight: dict[int, float] | None = None  # train.class_weight, as the fit loop applies it


def search_data(images: ImageSet, split: SplitOutcome, cfg: TuneConfig, train_cfg: TrainConfig,
                augment: AugmentConfig, seed: int) -> SearchData:
    """Epochs 1..E of the trainings' data (chimuf.ml.training.fit.epoch_datasets), one after another.

    Keras' fit with `steps_per_epoch` keeps one iterator across epochs, so a trial's epoch e sees
    the order and augmentation a training's epoch e sees.
    """
    from chimuf.ml.training.callbacks import EarlyStoppingRule

    train_part = (images.images, images.labels, images.rows(split.train))
    validation_part = (images.images, images.labels, images.rows(split.validation))
    train = validation = None
    for epoch in range(1, cfg.epochs + 1):
        one_train, one_validation = epoch_datasets(train_part, validation_part, train_cfg.batch_size,
                                                   augment, validation_augmentation(augment), seed, epoch)
        train = one_train if train is None else train.concatenate(one_train)
        validation = one_validation if validation is None else validation.concatenate(one_validation)
    return SearchData(train, validation, steps=math.ceil(len(split.train) / train_cfg.batch_size),
                      validation_steps=math.ceil(len(split.validation) / train_cfg.batch_size),
                      epochs=cfg.epochs,
                      callbacks=[EarlyStoppingRule(Stopping.of(train_cfg))],
                      class_weight=class_weights(images.labels[train_part[2]], train_cfg.class_weight))


# --- the search, locally or on a worker --------------------------------------------------------


def run_search(tuner: SearchTuner, data: SearchData) -> None:
    """Keras Tuner's search loop: locally, or on a worker until the chief says stop.

    Fatal errors come out as FatalError; a stop signal or a lost chief is re-raised as itself.
    """
    import keras_tuner as kt

    from chimuf.tuning.search import last_error

    try:
        tuner.search(data.train, validation_data=data.validation, epochs=data.epochs,
                     steps_per_epoch=data.steps, validation_steps=data.validation_steps,
                     callbacks=data.callbacks, class_weight=data.class_weight,
                     shuffle=False, verbose=0)  # shuffled already, by (seed, epoch)
    except kt.errors.FatalError as exc:
        if isinstance(exc.__cause__, (Interrupted, ChiefLost)):
            raise exc.__cause__ from None
        raise
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        raise StageError(
            f"tuning stopped: {MAX_CONSECUTIVE_FAILURES} trials in a row failed; the last error: "
            f"{last_error(tuner.oracle)}. Fix the cause and rerun; finished trials are kept."
        ) from None


def serve_as_chief(ctx: StageContext, hypermodel: Model3Family, cfg: TuneConfig, seed: int,
                   chief: Address) -> SearchTuner:
    """Serve the search at `chief` until every trial has ended (workers train them); the tuner."""
    from chimuf.tuning.chief import ChiefOracle, serve_search
    from chimuf.tuning.search import epoch_label, trial_history, trial_line

    with tuner_role(CHIEF_ID, chief):
        tuner = new_tuner(hypermodel, cfg, ctx.dir, seed, ctx.console, oracle_class=ChiefOracle)
    say_continuing(tuner.oracle, cfg, ctx.console)
    tuner.save()  # as Keras Tuner's own chief does before it serves
    oracle = tuner.oracle

    def announce(trial: Any) -> None:
        history = trial_history(trial, ctx.dir / "trials")
        worker = oracle.trial_workers.get(trial.trial_id, "")
        ctx.console.info(trial_line(trial, cfg.max_trials, OBJECTIVE, history, worker))

    def say_epoch(trial: Any, record: EpochRecord) -> None:
        worker = oracle.trial_workers.get(trial.trial_id, "")
        ctx.console.info(f"  {epoch_label(trial, cfg.max_trials, record.epoch, cfg.epochs, worker)}: "
                         f"{describe(record)} in {format_seconds(record.wall_s)}")

    serve_search(oracle, chief, cfg.worker_timeout_s, ctx.console, announce, say_epoch)
    return tuner


def work_for_chief(images: ImageSet, split: SplitOutcome, cfg: TuneConfig, train_cfg: TrainConfig,
                   augment: AugmentConfig, seed: int, workdir: Path, worker_id: str, chief: Address,
                   chief_timeout_s: float, console: Console) -> int:
    """Run the chief's trials here until it says the search is over; how many ran here.

    The same data, model family and callbacks as a local search; the tuner's own files (state,
    best weights, history of each trial) go to `workdir`, the history also to the chief.
    """
    from chimuf.tuning.search import quiet_keras_tuner

    hypermodel = trial_hypermodel(cfg, images.images.shape[1], train_cfg)
    data = search_data(images, split, cfg, train_cfg, augment, seed)
    with (tuner_role(worker_id, chief), client_timeout(chief_timeout_s), client_channel(chief),
          quiet_keras_tuner()):
        tuner = new_tuner(hypermodel, cfg, workdir, seed, console,
                          watch=trial_watch(cfg, train_cfg, len(split.train), workdir / "tensorboard"))
        run_search(tuner, data)
    return tuner.trials_run
