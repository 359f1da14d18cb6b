"""Training: the six trainings of the paper (sections 4-5), the final model (6), and the fit loop
that the tuning and k-fold stages share.

The fit loop is chimuf's own epoch loop rather than one `model.fit(epochs=50)` call, so that a
training can stop and resume at any epoch boundary with nothing lost:

    for each epoch e = 1, 2, ...:
        1. seed everything from (seed, e): Keras' global seed, the Dropout layers' generators,
           the shuffle and the augmentation (chimuf.pipeline)
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

import csv
import functools
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.config import AugmentConfig, TrainConfig
from chimuf.core.console import Console, format_seconds
from chimuf.core.engine import StageContext, atomic_write_json, atomic_write_text, fsync_dir, read_json
from chimuf.core.errors import StageError
from chimuf.core.results import (
    CacheOutcome,
    EpochRecord,
    Figure,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
    digest,
    from_jsonable,
)
from chimuf.ml.pipeline import DROPOUT, VALIDATION, WEIGHTS, derive_seed, make_dataset

if TYPE_CHECKING:
    import keras

    from chimuf.data.cache import ImageSet

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


# --- early stopping, as Keras decides it -------------------------------------------------------


@dataclass
class StopState:
    """Keras EarlyStopping's state: best val_loss seen, its epoch, epochs since, whether to stop."""

    best_val_loss: float | None = None
    best_epoch: int = 0  # 1-based; 0 = no epoch watched yet
    wait: int = 0
    stopped: bool = False


def watch(state: StopState, epoch: int, val_loss: float, patience: int, start_from_epoch: int) -> StopState:
    """The early-stopping state after 1-based `epoch` ended with `val_loss`.

    Keras' rules (keras.callbacks.EarlyStopping, min_delta 0, no baseline): the first
    `start_from_epoch` epochs are not watched at all; an epoch improves when its val_loss is
    strictly below the best so far; training stops once `patience` watched epochs in a row have
    not improved (never after the very first epoch).
    """
    if epoch <= start_from_epoch:
        return state
    if state.best_val_loss is None or val_loss < state.best_val_loss:
        return StopState(val_loss, epoch, 0, False)
    wait = state.wait + 1
    return StopState(state.best_val_loss, state.best_epoch, wait, wait >= patience and epoch > 1)


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
                n_train: int, n_validation: int) -> str:
    """What a checkpoint must have been made with to be continued; the epoch limit is not part of
    it, so a finished training can be extended."""
    import json

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("epochs", "models")}
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
    from chimuf.ml.models import save_model

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
) -> FitResult:
    """Train compiled `model` on `train` = (uint8 images (N, S, S, 3), labels), resumably.

    Validation data are augmented only when `augment.augment_validation` is on. At most
    `max_epochs` (default `cfg.epochs`) epochs, early stopping from `cfg`; afterwards `model` holds
    the best epoch's weights. Checkpoints go to `workdir`; a rerun continues from them.
    """
    from chimuf.ml.models import model_precision

    if model.optimizer is None:
        raise AssertionError(f"{name}: compile the model (chimuf.ml.models.compile_model) before fit")
    check_not_empty(train, "training", name)
    check_not_empty(validation, "validation", name)
    max_epochs = cfg.epochs if max_epochs is None else max_epochs
    workdir.mkdir(parents=True, exist_ok=True)
    state = resume(model, workdir, fingerprint(model, cfg, augment, seed, len(train[1]), len(validation[1])),
                   console, name)
    validation_augment = augment if augment is not None and augment.augment_validation else None

    while state.epoch < max_epochs and not state.stop.stopped:
        epoch = state.epoch + 1
        started = time.monotonic()
        record, train_s = run_epoch(model, train, validation, cfg, augment, validation_augment, seed,
                                    epoch, max_epochs, console, name)
        check_finite(record, name)
        state.stop = watch(state.stop, epoch, record.val_loss, cfg.patience, cfg.start_from_epoch)
        improved = state.stop.best_epoch == epoch
        record.wall_s = time.monotonic() - started
        state.epoch = epoch
        state.history.append(record)
        state.train_s += train_s
        state.images_trained += len(train[1])
        state.wall_s += record.wall_s
        save_checkpoint(model, workdir, state, improved)
        console.info(f"  {name} epoch {epoch}/{max_epochs}: {describe(record)}"
                     f"{' (best)' if improved else ''} in {format_seconds(record.wall_s)}")

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
) -> tuple[EpochRecord, float]:
    """One pass over the training data and one over the validation data; (record, training s)."""
    import keras

    seed_epoch(model, seed, epoch)
    train_rows = np.arange(len(train[1]))
    validation_rows = np.arange(len(validation[1]))
    train_data = make_dataset(*train, train_rows, cfg.batch_size, shuffle=True, seed=seed, epoch=epoch,
                              augment=augment)
    validation_data = make_dataset(*validation, validation_rows, cfg.batch_size, shuffle=False,
                                   seed=derive_seed(seed, VALIDATION), epoch=epoch,
                                   augment=validation_augment)
    steps = math.ceil(len(train_rows) / cfg.batch_size)
    clock: dict[str, float] = {}
    with console.progress(f"{name} epoch {epoch}/{max_epochs}", total=steps, unit="batches") as progress:
        callback = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda _epoch, _logs: clock.update(start=time.monotonic()),
            on_train_batch_end=lambda _batch, logs: progress.update(1, batch_status(logs)),
            on_test_begin=lambda _logs: clock.update(trained=time.monotonic()),
        )
        logs = model.fit(train_data, validation_data=validation_data, epochs=1, verbose=0,
                         shuffle=False, callbacks=[callback]).history  # shuffled by make_dataset
    value = {key: float(values[-1]) for key, values in logs.items()}
    record = EpochRecord(
        epoch=epoch,
        loss=value["loss"],
        accuracy=value["accuracy"],
        val_loss=value["val_loss"],
        val_accuracy=value["val_accuracy"],
        auc=value.get("auc", math.nan),
        val_auc=value.get("val_auc", math.nan),
    )
    return record, clock["trained"] - clock["start"]


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


# --- one training of the study -----------------------------------------------------------------


def train_one(
    ctx: StageContext,
    name: str,
    architecture: str,
    augmented: bool,
    hyperparameters: dict[str, float],
    images: ImageSet,
    split: SplitOutcome,
    cfg: TrainConfig,
    augment: AugmentConfig,
    seed: int,
) -> TrainingOutcome:
    """Build, fit and save one model; its history as CSV and JSON; its curves as a figure.

    Every training of a study starts from the same seed, so a model and its augmented twin start
    from the same weights and see the images in the same order: only augmentation differs.
    """
    import keras

    from chimuf.ml import modelfile
    from chimuf.ml.models import build_trainable_model, layer_rows, resolve_precision, save_model

    # 1. The model, initialised from the seed.
    precision = resolve_precision(cfg.precision)
    keras.utils.set_random_seed(derive_seed(seed, 0, WEIGHTS))
    model = build_trainable_model(architecture, images.images.shape[1],
                                  hyperparameters if architecture == "tuned" else None, precision,
                                  cfg.learning_rate)
    ctx.console.info(f"  {name}: {architecture}, {'with' if augmented else 'without'} augmentation, "
                     f"{model.count_params():,} parameters, {precision}")

    # 2. Fit, resumably, in the training's own work folder.
    train_rows, validation_rows = images.rows(split.train), images.rows(split.validation)
    result = fit(model,
                 (images.images[train_rows], images.labels[train_rows]),
                 (images.images[validation_rows], images.labels[validation_rows]),
                 cfg, augment if augmented else None, seed, ctx.dir / name, ctx.console, name)

    # 3. The best model, its class names, its history and its curves.
    model_path = save_model(model, ctx.dir / f"{name}.keras")
    modelfile.write_classes(model_path, split.classes)
    csv_path = write_history(result.history, ctx.dir / f"{name}_history.csv")
    atomic_write_json(ctx.dir / f"{name}_history.json", result.history)
    figure_path = plot_curves(result.history, result.best_epoch, pretty_name(name),
                              ctx.dir / f"{name}_curves.png")
    best = result.history[result.best_epoch - 1]
    return TrainingOutcome(
        name=name,
        architecture=architecture,
        augmented=augmented,
        params=model.count_params(),
        layers=layer_rows(model),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        best_val_loss=best.val_loss,
        best_val_accuracy=best.val_accuracy,
        history=result.history,
        history_csv=ctx.rel(csv_path),
        model_path=ctx.rel(model_path),
        figure=Figure(ctx.rel(figure_path),
                      f"Accuracy and loss of {pretty_name(name)} per epoch, training and validation"),
        wall_s=result.wall_s,
        images_per_s=result.images_per_s,
        precision=result.precision,
        hyperparameters=dict(hyperparameters) if architecture == "tuned" else {},
    )


def pretty_name(name: str) -> str:
    """"model2_aug" → "Model 2 (with augmentation)"; "final" → "the final model"."""
    if name == "final":
        return "the final model"
    base, _, aug = name.partition("_")
    label = base.replace("model", "Model ") if base.startswith("model") else base
    return f"{label} ({'with' if aug else 'without'} augmentation)"


def write_history(history: list[EpochRecord], path: Path) -> Path:
    columns = ["epoch", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc", "wall_s"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in history:
        writer.writerow([getattr(record, column) for column in columns])
    atomic_write_text(path, buffer.getvalue())
    return path


# --- figures (paper figures 3-8) ---------------------------------------------------------------


def plot_curves(history: list[EpochRecord], best_epoch: int, title: str, path: Path) -> Path:
    """Accuracy and loss per epoch, training and validation, the kept epoch marked (figs 3-5)."""
    from chimuf.ml.plots import pyplot, save_figure

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
    from chimuf.ml.plots import pyplot, save_figure

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


# --- the stages --------------------------------------------------------------------------------


def run_trainings(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: TrainConfig,
                  augment: AugmentConfig, seed: int) -> TrainOutcome:
    """Models cfg.models, each without and with augmentation (paper 5); finished ones are reused."""
    from chimuf.data.cache import load_images

    images = load_images(cache)
    trainings: list[TrainingOutcome] = []
    figures: list[Figure] = []
    for number in cfg.models:
        architecture = f"model{number}"
        pair = []
        for augmented in (False, True):
            name = f"{architecture}_aug" if augmented else architecture
            work = functools.partial(train_one, ctx, name, architecture, augmented, {}, images, split,
                                     cfg, augment, seed)
            pair.append(ctx.unit(name, TrainingOutcome, work))
        trainings += pair
        title = f"Model {number}"
        path = plot_comparison(pair[0], pair[1], title, ctx.dir / f"{architecture}_augmentation.png")
        figures.append(Figure(ctx.rel(path), f"Impact of data augmentation on {title}: validation "
                                             "(solid) and training (dashed) accuracy and loss per epoch"))
    return TrainOutcome(trainings=trainings, comparison_figures=figures)


def train_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome,
                hyperparameters: dict[str, float], cfg: TrainConfig, augment: AugmentConfig,
                seed: int) -> TrainingOutcome:
    """The tuned architecture with the best hyperparameters, trained with augmentation (paper 6)."""
    from chimuf.data.cache import load_images

    images = load_images(cache)
    return train_one(ctx, "final", "tuned", True, hyperparameters, images, split, cfg, augment, seed)
