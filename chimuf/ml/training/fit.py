"""The fit loop every training of a study runs through (the six trainings, the final model, the
k-fold models), the early-stopping rule the tuning trials share, and each epoch's data.

The fit loop is chimuf's own epoch loop rather than one `model.fit(epochs=50)` call, so that a
training can stop and resume at any epoch boundary with nothing lost:

    for each epoch e = 1, 2, ...:
        1. seed everything from (seed, e): Keras' global seed, the Dropout layers' generators,
           the shuffle and the augmentation (chimuf.ml.training.pipeline)
        2. train one pass over the (augmented) training data; evaluate on the validation data
        3. early stopping, as Keras' EarlyStopping(monitor="val_loss", patience,
           start_from_epoch, restore_best_weights=True) decides it
        4. checkpoint atomically into the work folder: the whole model with its optimizer state
           (epoch-NNN.keras), the best weights (best-epoch-NNN.weights.h5) and state.json (history,
           early-stopping state), written last, naming the two files it belongs with

A rerun finds state.json and continues at the next epoch. Because each epoch depends only on
(seed, epoch) and on the checkpointed weights and optimizer state, a training interrupted after
epoch k and resumed ends with the same weights and history as one that ran through (on the same
machine: tests/test_train.py checks it bit for bit on the CPU).

Why the Dropout generators are reset each epoch: their state is not saved in a `.keras` file
(Keras 3 saves only trainable and non-trainable variables), so a resumed model would otherwise
draw other dropout masks than the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.config import CLASS_WEIGHTS, AugmentConfig, TrainConfig
from chimuf.core.console import Console, format_seconds
from chimuf.core.errors import ConfigError, StageError
from chimuf.core.files import atomic_write_json, fsync_dir, read_json
from chimuf.core.plan import StudyClock
from chimuf.core.results import EpochRecord, digest, from_jsonable
from chimuf.ml.architectures.models import model_precision, save_model
from chimuf.ml.training.mixing import Mixing
from chimuf.ml.training.pipeline import make_dataset
from chimuf.ml.training.seeds import DROPOUT, VALIDATION, WEIGHTS, derive_seed
from chimuf.ml.training.tensorboard import EpochLog

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

STATE_FILE = "state.json"


@dataclass
class FitResult:
    """What one fit did. The model passed to `fit` holds the best epoch's weights afterwards."""

    history: list[EpochRecord]
    best_epoch: int  # 1-based epoch whose weights the model holds
    epochs_run: int
    stopped_early: bool
    wall_s: float  # training and validation passes of every epoch, summed over resumes
    images_per_s: float  # training images per second of training passes (no validation)
    precision: str  # "float32" | "mixed_bfloat16"


@dataclass(frozen=True)
class Monitoring:
    """Where trainings report while they run, beside their results: TensorBoard logs under
    `tensorboard_dir`/<stage>/<name>/ (None: none), extra Keras callbacks (a user's own), and the
    study's clock, which says after every epoch how long the whole study has left."""

    tensorboard_dir: Path | None = None
    callbacks: tuple[Any, ...] = ()
    clock: StudyClock | None = None

    def log(self, stage: str, name: str) -> EpochLog | None:
        return None if self.tensorboard_dir is None else EpochLog(self.tensorboard_dir / stage / name)

    def eta(self, stage: str, name: str) -> Callable[[int, int, float], str] | None:
        return None if self.clock is None else self.clock.eta(stage, name)


UNMONITORED = Monitoring()  # no TensorBoard logs, no extra callbacks


# --- early stopping, as Keras decides it -------------------------------------------------------


@dataclass(frozen=True)
class Stopping:
    """When a training stops and which epoch's weights it keeps, said to the fit loop once.

    `early` is the paper's rule (Keras' EarlyStopping on val_loss, restore_best_weights); `fixed`
    trains every epoch and keeps the last (the k-fold models: the fold that scores a model must not
    also choose its epoch); `best_of_all` trains every epoch and keeps the lowest val_loss (the
    modern recipe's whole cosine schedule, the pretrained phases).
    """

    patience: int | None  # watched epochs in a row without improvement before stopping; None: never
    start_from_epoch: int = 0  # epochs before val_loss is watched
    keep: str = "best"  # "best": the lowest watched val_loss; "last": the last epoch

    @classmethod
    def early(cls, patience: int, start_from_epoch: int) -> Stopping:
        return cls(patience, start_from_epoch, "best")

    @classmethod
    def of(cls, cfg: TrainConfig) -> Stopping:
        """The trainings' rule, from the config (paper 3.3)."""
        return cls.early(cfg.patience, cfg.start_from_epoch)

    @classmethod
    def fixed(cls) -> Stopping:
        return cls(None, 0, "last")

    @classmethod
    def best_of_all(cls) -> Stopping:
        return cls(None, 0, "best")


@dataclass
class StopState:
    """Keras EarlyStopping's state: best val_loss seen, its epoch, epochs since, whether to stop."""

    best_val_loss: float | None = None
    best_epoch: int = 0  # 1-based; 0 = no epoch watched yet
    wait: int = 0
    stopped: bool = False


def watch(state: StopState, epoch: int, val_loss: float, rule: Stopping) -> StopState:
    """The early-stopping state after 1-based `epoch` ended with `val_loss`.

    Keras' rules (keras.callbacks.EarlyStopping, min_delta 0, no baseline): the first
    `start_from_epoch` epochs are not watched at all; an epoch improves when its val_loss is
    strictly below the best so far; training stops once `patience` watched epochs in a row have
    not improved (never after the very first epoch). A rule that keeps the last epoch watches none.
    """
    if rule.keep == "last" or epoch <= rule.start_from_epoch:
        return state
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        return StopState(val_loss, epoch, 0, False)
    wait = state.wait + 1
    stop = rule.patience is not None and wait >= rule.patience and epoch > 1
    return StopState(state.best_val_loss, state.best_epoch, wait, stop)


# --- the checkpoint ----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """state.json of a training's work folder: everything needed to continue after `epoch`."""

    fingerprint: str  # the settings it was made with; other settings start afresh
    epoch: int  # last finished epoch, 1-based; 0 = none
    history: list[EpochRecord] = field(default_factory=list)
    stop: StopState = field(default_factory=StopState)
    model_file: str = ""  # epoch-NNN.keras: model + optimizer after `epoch`
    best_file: str = ""  # best-epoch-NNN.weights.h5: weights of stop.best_epoch
    wall_s: float = 0.0
    train_s: float = 0.0  # seconds in training passes
    images_trained: int = 0


def fingerprint(model: keras.Model, cfg: TrainConfig, augment: AugmentConfig | None, seed: int,
                n_train: int, n_validation: int, stopping: Stopping) -> str:
    """What a checkpoint must have been made with to be continued; the epoch limit is not part of
    it, so a finished training can be extended, and neither is the pool's size (`workers`), so a
    unit killed in a pool of two resumes in a pool of one."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("epochs", "models", "patience",
                                                                  "start_from_epoch", "workers")}
    settings["stopping"] = asdict(stopping)
    if settings.get("class_weight") == "none":
        del settings["class_weight"]  # the default: checkpoints made before the setting still match
    architecture = json.loads(model.to_json())
    architecture.pop("compile_config", None)  # names its optimizer "adam_1", "adam_2", ... per process
    return digest({"model": architecture, "train": settings, "augment": augment,
                   "seed": seed, "n_train": n_train, "n_validation": n_validation})


def resume(model: keras.Model, workdir: Path, expected: str, console: Console, name: str) -> Checkpoint:
    """The checkpoint in `workdir`, loaded into `model`; a fresh one when there is none to use."""
    saved = read_json(workdir / STATE_FILE)
    if saved is None:
        return Checkpoint(expected, 0)
    state: Checkpoint = from_jsonable(Checkpoint, saved)
    if state.fingerprint != expected:
        console.warn(f"{name}: the checkpoint in `{workdir}` was made with other settings; starting over")
        return Checkpoint(expected, 0)
    path = workdir / state.model_file
    if not path.is_file():
        raise StageError(
            f"{name}: `{workdir / STATE_FILE}` names `{state.model_file}`, which is missing; "
            f"delete the folder `{workdir}` to restart this training"
        )
    model.optimizer.build(model.trainable_variables)  # so that load_weights restores it too
    model.load_weights(path)
    console.info(f"  {name}: resuming after epoch {state.epoch}")
    return state


def save_checkpoint(model: keras.Model, workdir: Path, state: Checkpoint, improved: bool) -> Checkpoint:
    """Write this epoch's files, then state.json naming them, then remove the superseded ones."""
    state.model_file = f"epoch-{state.epoch:03d}.keras"
    save_model(model, workdir / state.model_file)
    if improved:
        state.best_file = f"best-epoch-{state.epoch:03d}.weights.h5"
        save_weights(model, workdir / state.best_file)
    atomic_write_json(workdir / STATE_FILE, state)
    for path in [*workdir.glob("epoch-*.keras"), *workdir.glob("best-epoch-*.weights.h5")]:
        if path.name not in (state.model_file, state.best_file):
            path.unlink()
    return state


def save_weights(model: keras.Model, path: Path) -> None:
    partial = path.with_name(f".partial.{path.name}")  # Keras wants the .weights.h5 suffix
    model.save_weights(partial)
    partial.replace(path)
    fsync_dir(path.parent)


# --- the fit loop ------------------------------------------------------------------------------


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    augment: AugmentConfig | None,
    seed: int,
    workdir: Path,
    console: Console,
    name: str,
    max_epochs: int | None = None,
    log: EpochLog | None = None,
    callbacks: Sequence[Any] = (),
    mix: Mixing | None = None,
    eta: Callable[[int, int, float], str] | None = None,
    stopping: Stopping | None = None,
) -> FitResult:
    """Train compiled `model` on `train` = (uint8 images (N, S, S, 3), labels), resumably.

    Validation data are augmented only when `augment.augment_validation` is on. At most
    `max_epochs` (default `cfg.epochs`) epochs, stopped and kept by `stopping` (default: early
    stopping from `cfg`); afterwards `model` holds the kept epoch's weights. Checkpoints go to
    `workdir`; a rerun continues from them. Each
    finished epoch goes to `log` (TensorBoard) once its checkpoint is saved; `callbacks` are
    extra Keras callbacks, which see each epoch under its own number (Keras' `initial_epoch`).
    With `mix`, training batches are mixed (mixup/CutMix) after augmentation; `eta(epoch,
    max_epochs, seconds)` gives the study's time left, said with each epoch.
    """
    if model.optimizer is None:
        raise AssertionError(f"{name}: compile the model (ml.architectures.models.compile_model) before fit")
    check_not_empty(train, "training", name)
    check_not_empty(validation, "validation", name)
    max_epochs = cfg.epochs if max_epochs is None else max_epochs
    stopping = stopping or Stopping.of(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    state = resume(model, workdir,
                   fingerprint(model, cfg, augment, seed, len(train[1]), len(validation[1]), stopping),
                   console, name)
    validation_augment = validation_augmentation(augment)
    if log is not None:
        if state.epoch == 0:
            log.reset()  # a training that starts over starts its curve over
        log.write(state.history)  # epochs checkpointed before a kill, not yet logged

    while state.epoch < max_epochs and not state.stop.stopped:
        epoch = state.epoch + 1
        started = time.monotonic()
        record, train_s = run_epoch(model, train, validation, cfg, augment, validation_augment, seed,
                                    epoch, max_epochs, console, name, callbacks, mix)
        check_finite(record, name)
        record.images_per_s = len(train[1]) / train_s if train_s > 0 else 0.0
        state.stop = watch(state.stop, epoch, record.val_loss, stopping)
        improved = state.stop.best_epoch == epoch
        record.wall_s = time.monotonic() - started
        state.epoch = epoch
        state.history.append(record)
        state.train_s += train_s
        state.images_trained += len(train[1])
        state.wall_s += record.wall_s
        save_checkpoint(model, workdir, state, improved)
        if log is not None:
            log.write(state.history)
        left = f"; {eta(epoch, max_epochs, record.wall_s)}" if eta is not None else ""
        console.info(f"  {name} epoch {epoch}/{max_epochs}: {describe(record)}"
                     f"{' (best)' if improved else ''} in {format_seconds(record.wall_s)}{left}")

    if log is not None:
        log.close()
    # Keras restores the best weights only when some epoch was watched; else the last stay.
    if state.best_file:
        model.load_weights(workdir / state.best_file)
    if state.stop.stopped:
        console.info(f"  {name}: stopped early after epoch {state.epoch}; best epoch {state.stop.best_epoch}")
    return FitResult(
        history=state.history,
        best_epoch=state.stop.best_epoch or state.epoch,
        epochs_run=state.epoch,
        stopped_early=state.stop.stopped,
        wall_s=state.wall_s,
        images_per_s=state.images_trained / state.train_s if state.train_s > 0 else 0.0,
        precision=model_precision(model),
    )


def run_epoch(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    augment: AugmentConfig | None,
    validation_augment: AugmentConfig | None,
    seed: int,
    epoch: int,
    max_epochs: int,
    console: Console,
    name: str,
    callbacks: Sequence[Any] = (),
    mix: Mixing | None = None,
) -> tuple[EpochRecord, float]:
    """One pass over the training data and one over the validation data; (record, training s).

    Keras sees the pass as epoch `epoch` of `max_epochs` (`initial_epoch`), so callbacks that
    count epochs (TensorBoard, schedules, a user's own) count the real ones.
    """
    import keras

    seed_epoch(model, seed, epoch)
    train_rows = np.arange(len(train[1]))
    train_data, validation_data = epoch_datasets((*train, train_rows),
                                                 (*validation, np.arange(len(validation[1]))),
                                                 cfg.batch_size, augment, validation_augment, seed, epoch,
                                                 mix)
    steps = math.ceil(len(train_rows) / cfg.batch_size)
    clock: dict[str, float] = {}
    with console.progress(f"{name} epoch {epoch}/{max_epochs}", total=steps, unit="batches") as progress:
        callback = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda _epoch, _logs: clock.update(start=time.monotonic()),
            on_train_batch_end=lambda _batch, logs: progress.update(1, batch_status(logs)),
            on_test_begin=lambda _logs: clock.update(trained=time.monotonic()),
        )
        logs = model.fit(train_data, validation_data=validation_data, initial_epoch=epoch - 1,
                         epochs=epoch, verbose=0, shuffle=False,  # shuffled by make_dataset
                         class_weight=class_weights(train[1], cfg.class_weight),
                         callbacks=[callback, *callbacks]).history
    value = {key: float(values[-1]) for key, values in logs.items()}
    record = EpochRecord(
        epoch=epoch,
        loss=value["loss"],
        accuracy=value["accuracy"],
        val_loss=value["val_loss"],
        val_accuracy=value["val_accuracy"],
        auc=value.get("auc", math.nan),
        val_auc=value.get("val_auc", math.nan),
        learning_rate=current_learning_rate(model),
    )
    return record, clock["trained"] - clock["start"]


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (a schedule's value at the current step)."""
    import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def seed_epoch(model: keras.Model, seed: int, epoch: int) -> None:
    """Make epoch `epoch`'s randomness a function of (seed, epoch) alone (see the module doc)."""
    import keras

    keras.utils.set_random_seed(derive_seed(seed, epoch, WEIGHTS))
    for index, layer in enumerate(model.layers):
        generator = getattr(layer, "seed_generator", None)  # Dropout's
        if generator is not None:
            state = [derive_seed(seed, epoch, DROPOUT, index), 0]
            generator.state.assign(keras.ops.convert_to_tensor(state, dtype=generator.state.dtype))


def batch_status(logs: dict[str, Any] | None) -> str:
    logs = logs or {}
    if "loss" not in logs:
        return ""
    return f"loss {float(logs['loss']):.3f} acc {float(logs.get('accuracy', math.nan)):.3f}"


def describe(record: EpochRecord) -> str:
    return (f"loss {record.loss:.4f} acc {record.accuracy:.4f}, "
            f"val_loss {record.val_loss:.4f} val_acc {record.val_accuracy:.4f}")


def check_not_empty(data: tuple[np.ndarray, np.ndarray], part: str, name: str) -> None:
    if len(data[1]) == 0:
        raise StageError(
            f"{name}: the {part} data is empty; the split left no images for it. Use more images "
            "(data.max_per_class) or change split.validation_fraction"
        )


def check_finite(record: EpochRecord, name: str) -> None:
    """A NaN or infinite loss is a diverged training: stop rather than record it as a result."""
    if not (math.isfinite(record.loss) and math.isfinite(record.val_loss)):
        raise StageError(
            f"{name} diverged at epoch {record.epoch}: loss {record.loss}, val_loss {record.val_loss}; "
            "lower train.learning_rate, or check the images of the split"
        )


# --- each epoch's data -------------------------------------------------------------------------

Part = tuple[np.ndarray, np.ndarray, np.ndarray]  # (uint8 images (N, S, S, 3), labels (N,), rows to use)


def class_weights(labels: np.ndarray, rule: str) -> dict[int, float] | None:
    """Keras' `class_weight` for `train.class_weight` (None for "none", the paper's).

    "balanced" weighs each image's loss by n / (2 · n_class), scikit-learn's "balanced": the two
    classes then weigh the same in the loss, however imbalanced the training split. Only the
    training loss is weighted; validation loss and every metric stay unweighted."""
    if rule == "none":
        return None
    if rule not in CLASS_WEIGHTS:
        raise ConfigError(f"`train.class_weight` must be one of {', '.join(CLASS_WEIGHTS)}; got {rule!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)  # (2,)
    return {k: float(len(labels) / (2 * counts[k])) if counts[k] else 1.0 for k in (0, 1)}


def validation_augmentation(augment: AugmentConfig | None) -> AugmentConfig | None:
    """What the validation data are augmented with: nothing, unless `augment_validation` is on."""
    return augment if augment is not None and augment.augment_validation else None


def epoch_datasets(train: Part, validation: Part, batch_size: int, augment: AugmentConfig | None,
                   validation_augment: AugmentConfig | None, seed: int, epoch: int,
                   mix: Mixing | None = None) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Epoch `epoch`'s batches: the training rows shuffled and augmented by (seed, epoch), the
    validation rows in their order (augmented, anew each epoch, only with `validation_augment`).

    The one place epoch data are made: the fit loop and the tuning trials both take theirs here,
    so a trial's epoch e sees the images a training's epoch e sees.
    """
    train_data = make_dataset(*train, batch_size, shuffle=True, seed=seed, epoch=epoch, augment=augment,
                              mix=mix)
    validation_data = make_dataset(*validation, batch_size, shuffle=False,
                                   seed=derive_seed(seed, VALIDATION), epoch=epoch,
                                   augment=validation_augment)
    return train_data, validation_data
