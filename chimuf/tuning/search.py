"""Keras Tuner, adapted: the seeded Bayesian oracle, the tuner with chimuf's hooks, the model family.

This module imports Keras Tuner (and with it TensorFlow) when it is imported; the tuning stage
imports it only when it runs. What each class adds to Keras Tuner:

    SeededBayesianOracle   draws each trial's random restarts from (seed, trial), so a resumed
                           search proposes what an unbroken one would (populate_space)
    SearchTuner            reseeds Keras from (seed, trial) before each trial; saves every
                           finished epoch to trials/trial_<id>.json and, on a worker, reports it to
                           the chief; says one line per trial (run_trial and the epoch/trial hooks)
    Model3Family           builds a "tuned" model from a trial's values (chimuf.tuning.space) and
                           trains it with the function the stage hands it

A local search, a chief and a worker all build their tuner with `make_tuner`.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.src import config as kt_config

from chimuf.core.console import Console, Progress, format_seconds
from chimuf.core.errors import Interrupted
from chimuf.core.files import atomic_write_json, read_json
from chimuf.core.plan import StudyClock, trial_unit
from chimuf.core.results import EpochRecord, Trial, from_jsonable
from chimuf.ml.architectures.models import build_model, compile_model
from chimuf.ml.training.fit import batch_status, describe
from chimuf.ml.training.seeds import TRIAL, derive_seed
from chimuf.ml.training.tensorboard import EpochLog, write_trial_hparams
from chimuf.tuning.protocol import (
    ChiefLost,
    forget_epochs,
    history_from_metrics,
    pruned_from_metrics,
    report_epoch,
)
from chimuf.tuning.pruning import MedianStopping
from chimuf.tuning.space import declare_space, trial_values

# --- the oracle --------------------------------------------------------------------------------


class SeededBayesianOracle(kt.oracles.BayesianOptimizationOracle):
    """Draws the Bayesian step's random restarts from (seed, trial number), not from a stream
    that a restart would rewind: a resumed search proposes what an unbroken one would."""

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        self._random_state = np.random.RandomState(derive_seed(self.seed, int(trial_id), TRIAL))
        return super().populate_space(trial_id)


# --- the model family --------------------------------------------------------------------------


class Model3Family(kt.HyperModel):
    """A "tuned" model (chimuf.ml.architectures.models) from each trial's values, trained by `fit`."""

    def __init__(self, cfg: Any, image_size: int, precision: str, learning_rate: float,
                 fit: Callable[..., Any]):
        super().__init__(name="model3_family", tunable=True)
        self.cfg = cfg  # TuneConfig: the ranges
        self.image_size = image_size
        self.precision = precision
        self.learning_rate = learning_rate
        self.fit_trial = fit

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        model = build_model("tuned", self.image_size, declare_space(hp, self.cfg), precision=self.precision)
        compile_model(model, self.learning_rate)
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        return self.fit_trial(model, *args, **kwargs)


# --- the tuner ---------------------------------------------------------------------------------


@dataclass
class TrialHistory:
    """What trials/trial_<id>.json holds: every finished epoch of one trial."""

    history: list[EpochRecord] = field(default_factory=list)
    wall_s: float = 0.0  # from the start of training to the end of the last finished epoch
    pruned: bool = False  # the median stopping rule ended it


@dataclass(frozen=True)
class TrialWatch:
    """What a tuner does around each trial's epochs besides training them."""

    board_dir: Path | None = None  # TensorBoard: one folder per trial; None: no logs
    images_per_epoch: int = 0  # training images an epoch sees (for images/s)
    steps_per_epoch: int = 0  # training batches an epoch has (for the progress bar)
    max_epochs: int = 0
    pruner: MedianStopping | None = None  # None: every trial runs until early stopping
    clock: StudyClock | None = None  # the study's: its time left, said with each epoch


class SearchTuner(kt.Tuner):
    """Keras Tuner's Tuner with chimuf's hooks: seeding, per-epoch history and progress, pruning,
    one line a trial."""

    def __init__(self, *args: Any, seed: int, history_dir: Path, console: Console,
                 watch: TrialWatch = TrialWatch(), **kwargs: Any):
        self.base_seed = seed
        self.history_dir = history_dir
        self.console = console
        self.watch = watch
        self.record = TrialHistory()
        self.epoch_log: EpochLog | None = None
        self.progress: Progress | None = None
        self.trials_run = 0
        super().__init__(*args, **kwargs)

    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        keras.utils.set_random_seed(derive_seed(self.base_seed, int(trial.trial_id), TRIAL))
        self.record = TrialHistory()
        if not self._is_worker():  # a local rerun of a trial a worker began: the file tells it now
            forget_epochs(trial)
        self.epoch_log = self.start_trial_log(trial)
        try:
            return super().run_trial(trial, *args, **kwargs)
        except (Interrupted, ChiefLost) as exc:  # a stop signal or no chief: not a failed trial
            raise kt.errors.FatalError(str(exc)) from exc
        finally:
            self.end_progress()

    def start_trial_log(self, trial: Any) -> EpochLog | None:
        """The trial's TensorBoard log, started over (a trial always runs from its first epoch),
        with its row of the HParams view."""
        if self.watch.board_dir is None:
            return None
        log = EpochLog(self.watch.board_dir / f"trial_{trial.trial_id}")
        log.reset()
        write_trial_hparams(log.folder, trial_values(trial.hyperparameters.values), trial.trial_id)
        return log

    def on_epoch_begin(self, trial: Any, model: Any, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = self.trained_until = time.monotonic()
        if not self.record.history:
            self.train_started = self.epoch_started
        self.progress = self.console.progress(
            epoch_label(trial, self.oracle.max_trials, epoch + 1, self.watch.max_epochs),
            total=self.watch.steps_per_epoch or None, unit="batches").__enter__()

    def on_batch_end(self, trial: Any, model: Any, batch: int, logs: dict | None = None) -> None:
        self.trained_until = time.monotonic()  # a training batch: validation batches do not come here
        if self.progress is not None:
            self.progress.update(1, batch_status(logs))

    def on_epoch_end(self, trial: Any, model: Any, epoch: int, logs: dict | None = None) -> None:
        self.end_progress()
        now = time.monotonic()
        record = epoch_record(epoch, logs or {}, now - self.epoch_started)
        record.learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        training_s = self.trained_until - self.epoch_started
        record.images_per_s = self.watch.images_per_epoch / training_s if training_s > 0 else 0.0
        self.record.history.append(record)
        self.record.wall_s = now - self.train_started
        pruner = self.watch.pruner
        if pruner is not None and pruner.should_stop(self.record.history, self.completed_histories()):
            self.record.pruned = True
            model.stop_training = True
        atomic_write_json(self.history_dir / f"trial_{trial.trial_id}.json", self.record)
        if self.epoch_log is not None:
            self.epoch_log.write(self.record.history)
        if self._is_worker():
            report_epoch(self.oracle, trial.trial_id, record, self.record.wall_s, self.record.pruned)
        pruned = "; pruned: below the median of the finished trials" if self.record.pruned else ""
        label = epoch_label(trial, self.oracle.max_trials, epoch + 1, self.watch.max_epochs)
        left = ""
        if self.watch.clock is not None:
            eta = self.watch.clock.eta("tune", trial_unit(trial.trial_id))
            left = f"; {eta(epoch + 1, self.watch.max_epochs, record.wall_s)}"
        self.console.info(f"  {label}: {describe(record)} in {format_seconds(record.wall_s)}{pruned}{left}")

    def end_progress(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None

    def completed_histories(self) -> list[list[EpochRecord]]:
        """The histories of the trials finished so far (on a worker, as the chief has them)."""
        ranked = self.oracle.get_best_trials(self.oracle.max_trials)  # padded with unfinished ones
        return [trial_history(t, self.history_dir).history for t in ranked if t.status == "COMPLETED"]

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_end(trial)
        self.trials_run += 1
        ended = self.oracle.get_trial(trial.trial_id)  # on a worker: as the chief scored it
        self.console.info(trial_line(ended, self.oracle.max_trials, self.oracle.objective.name,
                                     read_trial_history(self.history_dir, trial.trial_id)))


def epoch_label(trial: Any, max_trials: int, epoch: int, max_epochs: int, worker: str = "") -> str:
    """`epoch 3/50 of trial 2/10` (on `worker`): a trial's epoch, as the trainings' are said."""
    where = f" on {worker}" if worker else ""
    return f"epoch {epoch}/{max_epochs} of trial {int(trial.trial_id) + 1}/{max_trials}{where}"


def make_tuner(hypermodel: Model3Family, directory: Path, *, objective: str, max_trials: int,
               random_trials: int, max_failures: int, seed: int, console: Console, strategy: Any,
               oracle_class: type = SeededBayesianOracle, watch: TrialWatch = TrialWatch()) -> SearchTuner:
    """The Bayesian tuner in `directory`/search, reloaded if it exists (the one construction).

    Its role (local, chief or worker) comes from the KERASTUNER_* variables
    (chimuf.tuning.protocol.tuner_role); a chief passes its oracle class.
    """
    oracle = oracle_class(
        objective=kt.Objective(objective, direction="max"),
        max_trials=max_trials,
        num_initial_points=random_trials,
        seed=seed,
        max_consecutive_failed_trials=max_failures,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # Keras Tuner prints "Reloading Tuner from ..."
        return SearchTuner(oracle=oracle, hypermodel=hypermodel, directory=str(directory),
                           project_name="search", overwrite=False, seed=seed,
                           history_dir=directory / "trials", console=console, watch=watch,
                           distribution_strategy=strategy)


@contextlib.contextmanager
def quiet_keras_tuner() -> Iterator[None]:
    """Keras Tuner prints the traceback of every failed trial while its DEBUG flag is on (the
    default); chimuf records the error in the trials table and says it in one line instead.
    The flag is put back afterwards."""
    saved = kt_config.DEBUG
    kt_config.DEBUG = False
    try:
        yield
    finally:
        kt_config.DEBUG = saved


# --- what the trials did -----------------------------------------------------------------------


def read_trial_history(history_dir: Path, trial_id: str) -> TrialHistory:
    saved = read_json(history_dir / f"trial_{trial_id}.json")
    return TrialHistory() if saved is None else from_jsonable(TrialHistory, saved)


def trial_history(trial: Any, history_dir: Path) -> TrialHistory:
    """A trial's history: what its worker reported when a worker ran it, else its file.

    Each source is reset when the trial starts again (protocol.forget_epochs; the file is
    rewritten from the first epoch), so the one present is the trial's last run.
    """
    history, wall_s = history_from_metrics(trial)
    if history:
        return TrialHistory(history, wall_s, pruned_from_metrics(trial))
    return read_trial_history(history_dir, trial.trial_id)


def epoch_record(epoch: int, logs: dict[str, float], wall_s: float) -> EpochRecord:
    """Keras' logs of epoch `epoch` (0-based) as an EpochRecord (1-based)."""
    nan = float("nan")
    return EpochRecord(epoch=epoch + 1, loss=float(logs.get("loss", nan)),
                       accuracy=float(logs.get("accuracy", nan)),
                       val_loss=float(logs.get("val_loss", nan)),
                       val_accuracy=float(logs.get("val_accuracy", nan)),
                       auc=float(logs.get("auc", nan)), val_auc=float(logs.get("val_auc", nan)),
                       wall_s=wall_s)


def trial_line(trial: Any, max_trials: int, objective: str, saved: TrialHistory, worker: str = "") -> str:
    """`trial 2/10: val_accuracy 0.853 after 12 epochs (1m40s); conv1_filters 16, ...`"""
    number = int(trial.trial_id) + 1
    where = f" on {worker}" if worker else ""
    if trial.status != "COMPLETED":
        return f"  trial {number}/{max_trials} {trial.status.lower()}{where}: {error_line(trial.message)}"
    values = ", ".join(f"{k} {v}" for k, v in trial_values(trial.hyperparameters.values).items())
    pruned = ", pruned" if saved.pruned else ""
    return (f"  trial {number}/{max_trials}{where}: {objective} {trial.score:.3f} after "
            f"{len(saved.history)} epochs{pruned} ({format_seconds(saved.wall_s)}); {values}")


def collect_trials(oracle: Any, directory: Path) -> list[Trial]:
    """Every trial the oracle knows, in the order they started."""
    history_dir = directory / "trials"
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
            hyperparameters=trial_values(trial.hyperparameters.values),
            score=None if score is None or math.isnan(score) else float(score),
            epochs=len(saved.history),
            wall_s=saved.wall_s,
            history=saved.history,
            error=error_line(trial.message) if trial.status != "COMPLETED" else "",
            worker=workers.get(trial_id, ""),
            pruned=saved.pruned,
        ))
    return trials


def error_line(message: str | None) -> str:
    """The last line of a trial's traceback: the exception and its message."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else "no error message recorded"


def last_error(oracle: Any) -> str:
    failed = [t for t in oracle.trials.values() if t.status == "FAILED"]
    return error_line(failed[-1].message) if failed else "none recorded"
