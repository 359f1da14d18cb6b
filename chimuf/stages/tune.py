"""Hyperparameter search over the model-3 family (paper section 6): Keras Tuner, Bayesian.

The paper searched filters per conv block, dense units and two dropout rates with Keras Tuner's
BayesianOptimization, maximising `val_accuracy`, and found 16 / 96 / 192 filters, 96 units and
dropouts 0.05 and 0.4. Here the ranges come from TuneConfig ([min, max, step]); each trial trains
a "tuned" model (chimuf.models) with augmentation and the same early stopping as the trainings.

    TuneConfig ranges → keras_tuner.HyperParameters (declared as each trial's model is built)
    cache rows → tf.data (augmented train, shuffled by (seed, epoch); plain validation)
    make_tuner → oracle (Bayesian, seeded) + SearchTuner (our hooks) in ctx.dir/search/
    search → one line per trial; per-epoch history of each trial in ctx.dir/trials/
    → TuneOutcome: search space, every trial (failed ones with their error), best values

Resuming: the tuner's project folder is kept (`overwrite=False`), so a rerun reloads the oracle,
retries a trial that was cut off, and runs only the trials still missing. Each trial reseeds
Keras from (seed, trial number), and the oracle's Bayesian step reseeds from the same pair, so a
resumed search proposes and scores the same trials as an uninterrupted one.

Failures: an exception inside a trial marks it FAILED with its error and the search goes on
(Keras Tuner's own machinery); MAX_CONSECUTIVE_FAILURES failed trials in a row stop the stage.
A stop signal (chimuf.core.errors.Interrupted) is never taken for a failed trial: it ends the search.

On several machines (chimuf.distributed): with a `chief` address the stage serves the oracle and
workers (`work_for_chief`) run the trials; each worker reports every epoch to the chief, so the
trials table comes out as a local search's, plus the worker that ran each trial. Trials are then
proposed as results arrive, so which trials a distributed search tries depends on timing.
`make_tuner` is still the one place a tuner is built, for the chief, a worker or a local search.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.console import format_seconds
from chimuf.core.engine import atomic_write_json, read_json
from chimuf.core.errors import Interrupted, StageError
from chimuf.core.results import EpochRecord, SearchDimension, Trial, TuneOutcome, from_jsonable, to_jsonable
from chimuf.tuning.distributed import (
    CHIEF_ID,
    Address,
    ChiefLost,
    chief_oracle_class,
    client_timeout,
    forget_epochs,
    history_from_metrics,
    report_epoch,
    serve_search,
    training_strategy,
    tuner_role,
)

if TYPE_CHECKING:
    import keras_tuner as kt

    from chimuf.core.config import AugmentConfig, TrainConfig, TuneConfig
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.core.results import CacheOutcome, SplitOutcome

OBJECTIVE = "val_accuracy"
INTEGER_DIMENSIONS = ("conv1_filters", "conv2_filters", "conv3_filters", "dense_units")
RATE_DIMENSIONS = ("dropout_conv", "dropout_dense")
MAX_CONSECUTIVE_FAILURES = 3
# Keras Tuner's default is 3 random trials per dimension (18 here) before the Gaussian process
# takes over, more than the whole budget of the paper's protocol (10 trials), which would make
# the "Bayesian" search a random one. A third of the budget, at least 2, is random instead.
RANDOM_SHARE = 1 / 3
TRIAL_SALT = 6  # keeps the trial seeds apart from chimuf.ml.pipeline's salts (1-5)


def run_tuning(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: TuneConfig,
               train_cfg: TrainConfig, augment: AugmentConfig, seed: int,
               chief: Address | None = None) -> TuneOutcome:
    """Run (or continue) the search; every trial, its history and the best hyperparameters.

    With `chief`, this process serves the search at that address and workers run the trials.
    """
    started = time.monotonic()
    hypermodel = trial_hypermodel(cfg, cache.image_size, train_cfg)

    # 1-3. The tuner, reloaded from ctx.dir/search when a previous attempt left one; the search.
    if chief is None:
        tuner = make_tuner(hypermodel, cfg, ctx.dir, seed, ctx.console)
        say_continuing(tuner.oracle, cfg, ctx.console)
        run_search(tuner, search_data(cache, split, cfg, train_cfg, augment, seed))
    else:
        tuner = serve_as_chief(ctx, hypermodel, cfg, seed, chief)

    # 4. The trials table and the winner.
    trials = collect_trials(tuner, ctx.dir)
    completed = [t for t in trials if t.status == "COMPLETED" and t.score is not None]
    if not completed:
        raise StageError(f"tuning finished with no completed trial out of {len(trials)}; the last "
                         f"error: {last_error(tuner)}")
    best = max(completed, key=lambda t: t.score)  # first of equals: the earliest trial
    return TuneOutcome(
        objective=OBJECTIVE,
        max_trials=cfg.max_trials,
        search_space=search_space(cfg),
        trials=trials,
        best_hyperparameters=best.hyperparameters,
        best_score=float(best.score),
        wall_s=time.monotonic() - started,
    )


def serve_as_chief(ctx: StageContext, hypermodel: Any, cfg: TuneConfig, seed: int, chief: Address) -> Any:
    """Serve the search at `chief` until every trial has ended (workers train them); the tuner."""
    with tuner_role(CHIEF_ID, chief):
        tuner = make_tuner(hypermodel, cfg, ctx.dir, seed, ctx.console,
                           oracle_class=chief_oracle_class(seeded_oracle_class()))
    say_continuing(tuner.oracle, cfg, ctx.console)
    tuner.save()  # as Keras Tuner's own chief does before it serves
    oracle = tuner.oracle

    def announce(trial: Any) -> None:
        ctx.console.info(trial_line(trial, cfg.max_trials, trial_history(trial, ctx.dir / "trials"),
                                    oracle.trial_workers.get(trial.trial_id, "")))

    serve_search(oracle, chief, cfg.worker_timeout_s, ctx.console, announce)
    return tuner


def say_continuing(oracle: Any, cfg: TuneConfig, console: Console) -> None:
    finished = sum(t.status in ("COMPLETED", "FAILED") for t in oracle.trials.values())
    if finished:
        console.info(f"  continuing the search: {finished} of {cfg.max_trials} trials already done")


def tune_inputs(cfg: TuneConfig) -> dict[str, Any]:
    """The settings the search's results depend on, for the stage's fingerprint: all of them but
    `worker_timeout_s`, which only says how long a chief waits (changing it keeps finished trials)."""
    inputs = to_jsonable(cfg)
    inputs.pop("worker_timeout_s")
    return inputs


# --- 1. the search space -----------------------------------------------------------------------


def search_space(cfg: TuneConfig) -> list[SearchDimension]:
    """Every value each hyperparameter may take: min, min + step, ..., up to max."""
    return [SearchDimension(name, dimension_values(name, getattr(cfg, name)))
            for name in (*INTEGER_DIMENSIONS, *RATE_DIMENSIONS)]


def dimension_values(name: str, lo_hi_step: tuple[float, ...]) -> list[float]:
    low, high, step = lo_hi_step
    count = math.floor((high - low) / step + 1e-9) + 1
    if name in INTEGER_DIMENSIONS:
        return [int(low + k * step) for k in range(count)]
    return [round(low + k * step, 10) for k in range(count)]


def declare_space(hp: kt.HyperParameters, cfg: TuneConfig) -> dict[str, float]:
    """Declare the six hyperparameters on `hp` and return this trial's values, plain.

    Filters and units are `Int` ranges. Rates are an ordered `Choice` of the exact decimals that
    `search_space` lists: Keras Tuner's `Float(0.0, 0.5, step=0.05)` computes its values by float
    division and never offers 0.5, nor 0.15 exactly.
    """
    values: dict[str, float] = {}
    for name in INTEGER_DIMENSIONS:
        low, high, step = (int(v) for v in getattr(cfg, name))
        values[name] = int(hp.Int(name, low, high, step=step))
    for name in RATE_DIMENSIONS:
        choices = dimension_values(name, getattr(cfg, name))
        values[name] = float(hp.Choice(name, choices, ordered=True))
    return values


def plain_values(values: dict[str, Any]) -> dict[str, float]:
    """Keras Tuner's values as ints and floats rounded to 10 digits (0.15, not 0.15000000000000002)."""
    return {name: int(v) if name in INTEGER_DIMENSIONS else round(float(v), 10)
            for name, v in values.items()}


# --- 2. data -----------------------------------------------------------------------------------


@dataclass
class SearchData:
    """What every trial's `fit` gets: E epochs of batches back to back, and their step counts."""

    train: Any  # tf.data: augmented training batches, epochs 1..E
    validation: Any  # tf.data: validation batches, epochs 1..E
    steps: int
    validation_steps: int
    epochs: int
    callbacks: list[Any]


def search_data(cache: CacheOutcome, split: SplitOutcome, cfg: TuneConfig, train_cfg: TrainConfig,
                augment: AugmentConfig, seed: int) -> SearchData:
    from chimuf.data.cache import load_images

    images = load_images(cache)
    train_rows, val_rows = images.rows(split.train), images.rows(split.validation)
    train, steps = epochs_of_batches(images, train_rows, cfg.epochs, train_cfg.batch_size, augment, seed)
    validation, validation_steps = validation_batches(images, val_rows, cfg.epochs, train_cfg.batch_size,
                                                      augment, seed)
    return SearchData(train, validation, steps, validation_steps, cfg.epochs, [early_stopping(train_cfg)])


def epochs_of_batches(images: Any, rows: np.ndarray, epochs: int, batch_size: int,
                      augment: AugmentConfig, seed: int) -> tuple[Any, int]:
    """Epochs 1..E of augmented training batches, one after another, and steps per epoch.

    Keras' fit with `steps_per_epoch` keeps one iterator across epochs, so epoch e sees the order
    and augmentation that chimuf.pipeline draws for (seed, e), exactly as chimuf.train's epoch e.
    """
    from chimuf.ml.pipeline import make_dataset

    data = None
    for epoch in range(1, epochs + 1):
        one = make_dataset(images.images, images.labels, rows, batch_size, shuffle=True, seed=seed,
                           epoch=epoch, augment=augment)
        data = one if data is None else data.concatenate(one)
    return data, math.ceil(len(rows) / batch_size)


def validation_batches(images: Any, rows: np.ndarray, epochs: int, batch_size: int,
                       augment: AugmentConfig, seed: int) -> tuple[Any, int]:
    """Validation batches in split order for epochs 1..E, and steps per epoch, as chimuf.train
    makes them: augmented (anew each epoch) only when `augment.augment_validation` is on."""
    from chimuf.ml.pipeline import VALIDATION, derive_seed, make_dataset

    data = None
    for epoch in range(1, epochs + 1):
        one = make_dataset(images.images, images.labels, rows, batch_size, shuffle=False,
                           seed=derive_seed(seed, VALIDATION), epoch=epoch,
                           augment=augment if augment.augment_validation else None)
        data = one if data is None else data.concatenate(one)
    return data, math.ceil(len(rows) / batch_size)


def early_stopping(train_cfg: TrainConfig) -> Any:
    """The trainings' early stopping (paper 3.3): val_loss, patience, watched from an epoch on."""
    import keras

    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=train_cfg.patience,
                                         start_from_epoch=train_cfg.start_from_epoch,
                                         restore_best_weights=True)


# --- 3. the tuner and the search ---------------------------------------------------------------


def make_tuner(hypermodel: Any, cfg: TuneConfig, directory: Path, seed: int, console: Console,
               oracle_class: type | None = None) -> Any:
    """The Bayesian tuner in `directory`/search, reloaded if it exists (the one construction).

    Its role (local, chief or worker) comes from the KERASTUNER_* variables (distributed.tuner_role);
    a chief passes its oracle class. Trials train under distributed.training_strategy().
    """
    import keras_tuner as kt

    # Keras Tuner prints the traceback of every failed trial while its DEBUG flag is on (the
    # default); chimuf records the error in the trials table and says it in one line instead.
    from keras_tuner.src import config as kt_config

    kt_config.DEBUG = False
    oracle = (oracle_class or seeded_oracle_class())(
        objective=kt.Objective(OBJECTIVE, direction="max"),
        max_trials=cfg.max_trials,
        num_initial_points=max(2, round(cfg.max_trials * RANDOM_SHARE)),
        seed=seed,
        max_consecutive_failed_trials=MAX_CONSECUTIVE_FAILURES,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Keras Tuner prints "Reloading Tuner from ..."
        return search_tuner_class()(oracle=oracle, hypermodel=hypermodel, directory=str(directory),
                                    project_name="search", overwrite=False, seed=seed,
                                    history_dir=directory / "trials", console=console,
                                    distribution_strategy=training_strategy())


def run_search(tuner: Any, data: SearchData) -> None:
    """Keras Tuner's search loop: locally, or on a worker until the chief says stop.

    Fatal errors come out as FatalError; a stop signal or a lost chief is re-raised as itself.
    """
    import keras_tuner as kt

    try:
        tuner.search(data.train, validation_data=data.validation, epochs=data.epochs,
                     steps_per_epoch=data.steps, validation_steps=data.validation_steps,
                     callbacks=data.callbacks, shuffle=False, verbose=0)  # shuffled already, by (seed, epoch)
    except kt.errors.FatalError as exc:
        if isinstance(exc.__cause__, (Interrupted, ChiefLost)):
            raise exc.__cause__ from None
        raise
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        raise StageError(
            f"tuning stopped: {MAX_CONSECUTIVE_FAILURES} trials in a row failed; the last error: "
            f"{last_error(tuner)}. Fix the cause and rerun; finished trials are kept."
        ) from None


def work_for_chief(cache: CacheOutcome, split: SplitOutcome, cfg: TuneConfig, train_cfg: TrainConfig,
                   augment: AugmentConfig, seed: int, workdir: Path, worker_id: str, chief: Address,
                   chief_timeout_s: float, console: Console) -> int:
    """Run the chief's trials here until it says the search is over; how many ran here.

    The same data, model family and callbacks as a local search; the tuner's own files (state,
    best weights, history of each trial) go to `workdir`, the history also to the chief.
    """
    hypermodel = trial_hypermodel(cfg, cache.image_size, train_cfg)
    data = search_data(cache, split, cfg, train_cfg, augment, seed)
    with tuner_role(worker_id, chief), client_timeout(chief_timeout_s):
        tuner = make_tuner(hypermodel, cfg, workdir, seed, console)
        run_search(tuner, data)
    return tuner.trials_run


def seeded_oracle_class() -> type:
    import keras_tuner as kt

    class SeededBayesianOracle(kt.oracles.BayesianOptimizationOracle):
        """Draws the Bayesian step's random restarts from (seed, trial number), not from a
        stream that a restart would rewind: a resumed search proposes what an unbroken one would."""

        def populate_space(self, trial_id: str) -> dict[str, Any]:
            from chimuf.ml.pipeline import derive_seed

            self._random_state = np.random.RandomState(derive_seed(self.seed, int(trial_id), TRIAL_SALT))
            return super().populate_space(trial_id)

    return SeededBayesianOracle


def search_tuner_class() -> type:
    import keras
    import keras_tuner as kt

    class SearchTuner(kt.Tuner):
        """Keras Tuner's Tuner with chimuf's hooks: seeding, per-epoch history, one line a trial.

        Every finished epoch is saved to history_dir/trial_<id>.json and, on a worker, reported
        to the chief (distributed.epoch_metrics); Keras Tuner calls these hooks from each fit.
        """

        def __init__(self, *args: Any, seed: int, history_dir: Path, console: Console,
                     **kwargs: Any):
            self.base_seed = seed
            self.history_dir = history_dir
            self.console = console
            self.record = TrialHistory()
            self.trials_run = 0
            super().__init__(*args, **kwargs)

        def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
            from chimuf.ml.pipeline import derive_seed

            keras.utils.set_random_seed(derive_seed(self.base_seed, int(trial.trial_id), TRIAL_SALT))
            self.record = TrialHistory()
            if not self._is_worker():  # a local rerun of a trial a worker began: the file tells it now
                forget_epochs(trial)
            try:
                return super().run_trial(trial, *args, **kwargs)
            except (Interrupted, ChiefLost) as exc:  # a stop signal or no chief: not a failed trial
                raise kt.errors.FatalError(str(exc)) from exc

        def on_epoch_begin(self, trial: Any, model: Any, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = time.monotonic()
            if not self.record.history:
                self.train_started = self.epoch_started

        def on_epoch_end(self, trial: Any, model: Any, epoch: int, logs: dict | None = None) -> None:
            now = time.monotonic()
            record = epoch_record(epoch, logs or {}, now - self.epoch_started)
            self.record.history.append(record)
            self.record.wall_s = now - self.train_started
            atomic_write_json(self.history_dir / f"trial_{trial.trial_id}.json", self.record)
            if self._is_worker():
                report_epoch(self.oracle, trial.trial_id, record, self.record.wall_s)

        def _configure_tensorboard_dir(self, callbacks: list[Any], trial: Any, execution: int = 0) -> None:
            # Keras Tuner 1.4 imports tensorboard here unconditionally, to patch TensorBoard
            # callbacks. The search passes none, and tensorboard is not a dependency of chimuf.
            if any(type(c).__name__ == "TensorBoard" for c in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

        def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
            super().on_trial_end(trial)
            self.trials_run += 1
            ended = self.oracle.get_trial(trial.trial_id)  # on a worker: as the chief scored it
            self.console.info(trial_line(ended, self.oracle.max_trials,
                                         read_trial_history(self.history_dir, trial.trial_id)))

    return SearchTuner


def trial_line(trial: Any, max_trials: int, saved: TrialHistory, worker: str = "") -> str:
    """`trial 2/10: val_accuracy 0.853 after 12 epochs (1m40s); conv1_filters 16, ...`"""
    number = int(trial.trial_id) + 1
    where = f" on {worker}" if worker else ""
    if trial.status != "COMPLETED":
        return f"  trial {number}/{max_trials} {trial.status.lower()}{where}: {error_line(trial.message)}"
    values = ", ".join(f"{k} {v}" for k, v in plain_values(trial.hyperparameters.values).items())
    return (f"  trial {number}/{max_trials}{where}: {OBJECTIVE} {trial.score:.3f} after "
            f"{len(saved.history)} epochs ({format_seconds(saved.wall_s)}); {values}")


# --- 4. the model family, as Keras Tuner sees it -----------------------------------------------
# Keras Tuner (and Keras) are imported on first use only, so the classes deriving from theirs are
# made by small factories.


def trial_hypermodel(cfg: TuneConfig, image_size: int, train_cfg: TrainConfig) -> Any:
    from chimuf.ml.models import resolve_precision

    return model3_family(cfg, image_size, resolve_precision(train_cfg.precision), train_cfg.learning_rate)


def model3_family(cfg: TuneConfig, image_size: int, precision: str, learning_rate: float) -> Any:
    """A kt.HyperModel that builds a "tuned" model from each trial's values."""
    import keras_tuner as kt

    class Model3Family(kt.HyperModel):
        def build(self, hp: kt.HyperParameters) -> Any:
            return build_trial_model(hp, cfg, image_size, precision, learning_rate)

        def fit(self, hp: kt.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
            return fit_trial(model, *args, **kwargs)

    return Model3Family(name="model3_family", tunable=True)


def build_trial_model(hp: kt.HyperParameters, cfg: TuneConfig, image_size: int, precision: str,
                      learning_rate: float) -> Any:
    from chimuf.ml.models import build_model, compile_model

    values = declare_space(hp, cfg)
    model = build_model("tuned", image_size, values, precision=precision)
    compile_model(model, learning_rate)
    return model


def fit_trial(model: Any, *args: Any, **kwargs: Any) -> Any:
    """Train one trial's model: plain `model.fit` with the search's data and callbacks."""
    return model.fit(*args, **kwargs)


# --- 5. per-trial history, saved as it grows ---------------------------------------------------


@dataclass
class TrialHistory:
    """What ctx.dir/trials/trial_<id>.json holds: every finished epoch of one trial."""

    history: list[EpochRecord] = field(default_factory=list)
    wall_s: float = 0.0  # from the start of training to the end of the last finished epoch


def read_trial_history(history_dir: Path, trial_id: str) -> TrialHistory:
    saved = read_json(history_dir / f"trial_{trial_id}.json")
    return TrialHistory() if saved is None else from_jsonable(TrialHistory, saved)


def trial_history(trial: Any, history_dir: Path) -> TrialHistory:
    """A trial's history: what its worker reported when a worker ran it, else its file.

    Each source is reset when the trial starts again (distributed.forget_epochs; the file is
    rewritten from the first epoch), so the one present is the trial's last run.
    """
    history, wall_s = history_from_metrics(trial)
    return TrialHistory(history, wall_s) if history else read_trial_history(history_dir, trial.trial_id)


def epoch_record(epoch: int, logs: dict[str, float], wall_s: float) -> EpochRecord:
    """Keras' logs of epoch `epoch` (0-based) as an EpochRecord (1-based)."""
    nan = float("nan")
    return EpochRecord(epoch=epoch + 1, loss=float(logs.get("loss", nan)),
                       accuracy=float(logs.get("accuracy", nan)),
                       val_loss=float(logs.get("val_loss", nan)),
                       val_accuracy=float(logs.get("val_accuracy", nan)),
                       auc=float(logs.get("auc", nan)), val_auc=float(logs.get("val_auc", nan)),
                       wall_s=wall_s)


# --- 6. the trials table -----------------------------------------------------------------------


def collect_trials(tuner: Any, directory: Path) -> list[Trial]:
    """Every trial the oracle knows, in the order they started."""
    history_dir = directory / "trials"
    oracle = tuner.oracle
    workers = getattr(oracle, "trial_workers", {})  # a chief's oracle knows who ran each trial
    order = list(oracle.start_order) or sorted(oracle.trials)
    trials = []
    for trial_id in order:
        trial = oracle.trials[trial_id]
        saved = trial_history(trial, history_dir)
        score = trial.score if trial.status == "COMPLETED" else None
        trials.append(Trial(
            trial_id=trial_id,
            status=str(trial.status),
            hyperparameters=plain_values(trial.hyperparameters.values),
            score=None if score is None or math.isnan(score) else float(score),
            epochs=len(saved.history),
            wall_s=saved.wall_s,
            history=saved.history,
            error=error_line(trial.message) if trial.status != "COMPLETED" else "",
            worker=workers.get(trial_id, ""),
        ))
    return trials


def error_line(message: str | None) -> str:
    """The last line of a trial's traceback: the exception and its message."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else "no error message recorded"


def last_error(tuner: Any) -> str:
    failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
    return error_line(failed[-1].message) if failed else "none recorded"
