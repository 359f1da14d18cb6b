"""The trainings of the paper: models 1-3 each without and with augmentation (sections 4-5), and
the final model with the tuned hyperparameters (section 6).

    cache rows of the split → for each model: seeded_model → fit (chimuf.ml.training.fit: resumable,
    early stopping) → the best weights saved as <name>.keras with its classes beside it
    → history CSV/JSON and curves → TrainingOutcome

Each training is a unit of the stage (ctx.unit): finished ones are reused when the stage resumes,
and an interrupted one continues from its last epoch. The six run in a pool of worker processes
(chimuf.ml.training.pool, `train.workers`), with the same numbers for any pool size (docs/parallel.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.config import AugmentConfig, ModernConfig, PretrainedConfig, TrainConfig
from chimuf.core.engine import StageContext
from chimuf.core.errors import StageError
from chimuf.core.files import atomic_write_json, atomic_write_text, csv_text
from chimuf.core.hyperparameters import Hyperparameters
from chimuf.core.results import (
    CacheOutcome,
    EpochRecord,
    Figure,
    OwnOutcome,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
)
from chimuf.data.cache import load_images
from chimuf.ml.architectures import builders as own
from chimuf.ml.architectures.builders import Builder
from chimuf.ml.architectures.models import (
    layer_rows,
    resolve_precision,
    save_model,
    seeded_model,
    training_strategy,
)
from chimuf.ml.architectures.modern import build_modern, compile_modern, seeded_modern
from chimuf.ml.architectures.pretrained import build_pretrained, compile_pretrained, unfreeze_top
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.plots.training_plots import plot_comparison, plot_curves
from chimuf.ml.training.fit import UNMONITORED, Monitoring, Stopping, fit
from chimuf.ml.training.mixing import Mixing
from chimuf.ml.training.pool import Unit, UnitFailure, run_units
from chimuf.ml.training.seeds import WEIGHTS, derive_seed

if TYPE_CHECKING:
    import keras

    from chimuf.data.cache import ImageSet


def train_one(
    ctx: StageContext,
    name: str,
    architecture: str,
    augmented: bool,
    hyperparameters: Hyperparameters | None,
    images: ImageSet,
    split: SplitOutcome,
    cfg: TrainConfig,
    augment: AugmentConfig,
    seed: int,
    monitor: Monitoring = UNMONITORED,
    model: keras.Model | None = None,
    mix: Mixing | None = None,
    stopping: Stopping | None = None,
) -> TrainingOutcome:
    """Build, fit and save one model; its history as CSV and JSON; its curves as a figure.

    Every training of a study starts from the same seed, so a model and its augmented twin start
    from the same weights and see the images in the same order: only augmentation differs. A
    `model` built and compiled by the caller (the modern recipe) is trained instead of the
    paper's `architecture`; `mix` mixes its training batches; `stopping` says when it stops and
    which epoch it keeps (default: the paper's early stopping, from `cfg`).
    """
    # 1. The model, initialised from the seed.
    precision = resolve_precision(cfg.precision)
    if model is None:
        model = seeded_model(architecture, images.images.shape[1], hyperparameters, precision,
                             cfg.learning_rate, seed)
    ctx.console.info(f"  {name}: {architecture}, {'with' if augmented else 'without'} augmentation, "
                     f"{model.count_params():,} parameters, {precision}")

    # 2. Fit, resumably, in the training's own work folder.
    train_rows, validation_rows = images.rows(split.train), images.rows(split.validation)
    result = fit(model,
                 (images.images[train_rows], images.labels[train_rows]),
                 (images.images[validation_rows], images.labels[validation_rows]),
                 cfg, augment if augmented else None, seed, ctx.dir / name, ctx.console, name,
                 log=monitor.log(ctx.name, name), callbacks=monitor.callbacks, mix=mix,
                 eta=monitor.eta(ctx.name, name), stopping=stopping)

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
        hyperparameters=Hyperparameters.of(hyperparameters) if architecture == "tuned" else None,
        model_sha256=modelfile.file_sha256(model_path),
    )


def pretty_name(name: str) -> str:
    """"model2_aug" → "Model 2 (with augmentation)"; "final" → "the final model"."""
    if name == "final":
        return "the final model"
    if name == "modern":
        return "the modern recipe"
    if name.startswith("pretrained"):
        return "the pretrained baseline" + (" (its head)" if name.endswith("_head") else "")
    base, _, aug = name.partition("_")
    label = base.replace("model", "Model ") if base.startswith("model") else base
    return f"{label} ({'with' if aug else 'without'} augmentation)"


def write_history(history: list[EpochRecord], path: Path) -> Path:
    columns = ["epoch", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc", "wall_s"]
    rows = ([getattr(record, column) for column in columns] for record in history)
    atomic_write_text(path, csv_text(columns, rows))
    return path


# --- the stages --------------------------------------------------------------------------------


def run_trainings(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: TrainConfig,
                  augment: AugmentConfig, seed: int, monitor: Monitoring = UNMONITORED) -> TrainOutcome:
    """Models cfg.models, each without and with augmentation (paper 5); finished ones are reused.

    The trainings are independent units: they run in a pool of `cfg.workers` processes
    (chimuf.ml.training.pool), each with `cfg.threads_per_unit` threads, and give the same numbers with any
    pool size. A training that fails stops the stage once the others are done (theirs are kept)."""
    units = [Unit(name, functools.partial(paper_training, name=name, architecture=architecture,
                                          augmented=augmented, cache=cache, split=split, cfg=cfg,
                                          augment=augment, seed=seed))
             for architecture, augmented, name in paper_units(cfg.models)]
    outcomes = run_units(ctx, units, TrainingOutcome, cfg.workers, cfg.threads_per_unit, monitor)
    failed = [outcome for outcome in outcomes if isinstance(outcome, UnitFailure)]
    if failed:
        raise StageError(f"{len(failed)} of the {len(units)} trainings failed; the first: {failed[0].error}")
    by_name = {outcome.name: outcome for outcome in outcomes if isinstance(outcome, TrainingOutcome)}
    trainings: list[TrainingOutcome] = []
    figures: list[Figure] = []
    for number in cfg.models:
        architecture = f"model{number}"
        pair = [by_name[architecture], by_name[f"{architecture}_aug"]]
        trainings += pair
        title = f"Model {number}"
        path = plot_comparison(pair[0], pair[1], title, ctx.dir / f"{architecture}_augmentation.png")
        figures.append(Figure(ctx.rel(path), f"Impact of data augmentation on {title}: validation "
                                             "(solid) and training (dashed) accuracy and loss per epoch"))
    return TrainOutcome(trainings=trainings, comparison_figures=figures)


def paper_units(models: tuple[int, ...]) -> list[tuple[str, bool, str]]:
    """(architecture, augmented, unit name) of each paper training, in the study's order."""
    return [(f"model{number}", augmented, f"model{number}_aug" if augmented else f"model{number}")
            for number in models for augmented in (False, True)]


def paper_training(ctx: StageContext, monitor: Monitoring, *, name: str, architecture: str, augmented: bool,
                   cache: CacheOutcome, split: SplitOutcome, cfg: TrainConfig, augment: AugmentConfig,
                   seed: int) -> TrainingOutcome:
    """One of the paper's trainings as a unit of the pool: its images memory-mapped from the cache
    (cheap in every worker), then train_one."""
    return train_one(ctx, name, architecture, augmented, None, load_images(cache), split, cfg, augment, seed,
                     monitor)


def train_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome,
                hyperparameters: Hyperparameters, cfg: TrainConfig, augment: AugmentConfig,
                seed: int, monitor: Monitoring = UNMONITORED) -> TrainingOutcome:
    """The tuned architecture with the best hyperparameters, trained with augmentation (paper 6)."""
    images = load_images(cache)
    return train_one(ctx, "final", "tuned", True, hyperparameters, images, split, cfg, augment, seed,
                     monitor)


def train_modern(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: ModernConfig,
                 train_cfg: TrainConfig, augment: AugmentConfig, seed: int,
                 monitor: Monitoring = UNMONITORED, smaller: CacheOutcome | None = None) -> TrainingOutcome:
    """The modern recipe (chimuf.ml.architectures.modern): the whole cosine schedule, no early stopping; the
    epoch with the lowest val_loss is kept, as the fit loop keeps a best epoch.

    With `smaller` (the same photos decoded at `cfg.train_side`), it trains on those and is saved
    taking `cache`'s side: global pooling makes the weights fit any side, and every later stage
    (evaluation, Grad-CAM, export) sees a model of the study's side."""
    images = load_images(smaller or cache)
    fit_cfg = replace(train_cfg, epochs=cfg.epochs, batch_size=cfg.batch_size)
    steps = math.ceil(len(split.train) / cfg.batch_size)
    precision = resolve_precision(train_cfg.precision)
    model = seeded_modern(images.images.shape[1], cfg, precision, steps, seed)
    outcome = train_one(ctx, "modern", "modern", cfg.augment, None, images, split, fit_cfg, augment, seed,
                        monitor, model=model, mix=Mixing.of(cfg.mixup, cfg.cutmix),
                        stopping=Stopping.best_of_all())
    if smaller is None:  # the stage passes a smaller cache only where the sides differ
        return outcome
    return at_side(ctx, outcome, model, cache.image_size, cfg, precision, steps, split.classes)


def at_side(ctx: StageContext, outcome: TrainingOutcome, model: keras.Model, side: int, cfg: ModernConfig,
            precision: str, steps: int, classes: list[str]) -> TrainingOutcome:
    """The trained `model`'s weights in a modern model taking `side`² images, saved in its place."""
    with training_strategy().scope():
        full = build_modern(side, cfg, precision, cfg.epochs * steps)
        compile_modern(full, cfg, steps)
    full.set_weights(model.get_weights())
    path = save_model(full, ctx.run_dir / outcome.model_path)
    modelfile.write_classes(path, classes)
    ctx.console.info(f"  modern: trained at {model.inputs[0].shape[1]} px, saved to take {side} px images")
    return replace(outcome, layers=layer_rows(full), model_sha256=modelfile.file_sha256(path),
                   trained_side=int(model.inputs[0].shape[1]))


def train_pretrained(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, cfg: PretrainedConfig,
                     train_cfg: TrainConfig, augment: AugmentConfig, seed: int,
                     monitor: Monitoring = UNMONITORED) -> TrainingOutcome:
    """The pretrained baseline (ml.architectures.pretrained): the head with the backbone frozen, then the
    backbone's last layers fine-tuned; each phase keeps its best val_loss epoch and resumes."""
    import keras

    images = load_images(cache)
    keras.utils.set_random_seed(derive_seed(seed, 0, WEIGHTS))
    model = build_pretrained(images.images.shape[1], cfg, cfg.weights or "imagenet")
    compile_pretrained(model, cfg.learning_rate)
    head = replace(train_cfg, epochs=cfg.epochs, precision="float32")
    name = "pretrained_head" if cfg.fine_tune_epochs else "pretrained"
    outcome = train_one(ctx, name, "pretrained", True, None, images, split, head, augment, seed, monitor,
                        model=model, stopping=Stopping.best_of_all())
    if not cfg.fine_tune_epochs:
        return outcome
    trainable = unfreeze_top(model, cfg.fine_tune_layers)
    compile_pretrained(model, cfg.fine_tune_learning_rate)
    ctx.console.info(f"  pretrained: fine-tuning {trainable} layers at learning rate "
                     f"{cfg.fine_tune_learning_rate:g}")
    fine = replace(head, epochs=cfg.fine_tune_epochs)
    return train_one(ctx, "pretrained", "pretrained", True, None, images, split, fine, augment, seed, monitor,
                     model=model, stopping=Stopping.best_of_all())


def train_own(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, builders: Mapping[str, Builder],
              cfg: TrainConfig, augment: AugmentConfig, seed: int,
              monitor: Monitoring = UNMONITORED) -> OwnOutcome:
    """Each of the user's own architectures (ml.architectures.builders), trained as the paper's models are:
    the fit loop with train.* settings and early stopping, with augmentation, resumably."""
    images = load_images(cache)
    trainings = []
    for name, builder in builders.items():
        def work(name: str = name, builder: Builder = builder) -> TrainingOutcome:
            model = own.build(name, builder, images.images.shape[1], seed, cfg.learning_rate)
            return train_one(ctx, name, "own", True, None, images, split, cfg, augment, seed, monitor,
                             model=model)
        trainings.append(ctx.unit(name, TrainingOutcome, work))
    return OwnOutcome(trainings)
