"""Which of the stronger-recipe pieces pay, measured on the validation split (issue 25).

One training of the modern recipe answers several questions at once, because these pieces change
nothing about how it trains, only which weights or which pixels are looked at afterwards:

    EMA          an exponential moving average of every weight (batch-norm statistics included),
                 updated after each training batch, for two decays; a callback on the side, so
                 the training itself is the recipe's own, batch for batch
    flips        test-time augmentation: the mean of the image's and its mirror image's scores
    resolution   the same weights tested at a larger side than they were trained at (the
                 train-test resolution discrepancy: random crops and zooms make objects look
                 bigger in training than in testing), from a cache decoded at that side

and arms that do change the training, each a training of its own:

    longer       the same recipe over more epochs (--epochs of the arm)
    lower        trained at 7/8 of the side (0.77× the pixels per image), tested at the full side

Each arm prints one table row per (weights, flips, tested side): validation accuracy and log loss on
the study's validation split (seed 42, the study's stratified split), and the arm's CPU seconds.
On 473 validation images a 95 % interval is about ±2 points: small gains are noise.

    CHIMUF_DATA=../shared/data/chihuahua-muffin python -m benchmarks.recipe_pieces
        [--image-size 128] [--epochs 20] [--arms base longer lower] [--longer-epochs 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.modern_recipe import context, cpu_s

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EMA_DECAYS = (0.99, 0.998)  # about 2 and 10 epochs' memory at 52 steps per epoch
ARMS = ("base", "longer", "lower")


def prepare(data_dir: Path | None, sizes: list[int], root: Path):
    """Audit and split as the study does (all photos, seed 42); a cache per side."""
    import io

    from chimuf.core.config import AuditConfig, SplitConfig
    from chimuf.core.console import Console
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache, load_images
    from chimuf.data.split import split_dataset
    from tests.conftest import make_dataset

    console = Console(stream=io.StringIO(), live=False)
    folder = data_dir if data_dir is not None and data_dir.is_dir() else make_dataset(root / "data", 200, 96)
    audit = audit_folder(folder, AuditConfig(), console, max_per_class=0, seed=42)
    split = split_dataset(audit, SplitConfig(), 42)
    caches = {size: build_cache(audit, folder, size, root / "cache", console) for size in sorted(set(sizes))}
    return caches, {size: load_images(cache) for size, cache in caches.items()}, split


class WeightAverage:
    """EMA shadows of every model weight, updated after each batch in one compiled function."""

    def __init__(self, model, decays: tuple[float, ...]):
        import keras
        import tensorflow as tf

        self.model, self.decays = model, decays
        self.shadows = {d: [tf.Variable(w.numpy(), trainable=False) for w in model.weights] for d in decays}
        averaged = self

        @tf.function
        def update():
            for decay, shadow in averaged.shadows.items():
                for s, w in zip(shadow, averaged.model.weights, strict=True):
                    s.assign(decay * s + (1.0 - decay) * tf.cast(w, s.dtype))

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                update()

        self.callback = Callback()

    def weights(self, decay: float) -> list[np.ndarray]:
        return [s.numpy() for s in self.shadows[decay]]


def scores(model, images: np.ndarray, flips: bool) -> np.ndarray:
    """Sigmoid outputs, the mean with the mirror images' when `flips`."""
    out = model.predict(images, batch_size=128, verbose=0).reshape(-1).astype(np.float64)
    if flips:
        out = (out + model.predict(images[:, :, ::-1], batch_size=128, verbose=0).reshape(-1)) / 2
    return out


def measure(score: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy at 0.5, log loss)."""
    p = np.clip(score, 1e-7, 1 - 1e-7)
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return float(np.mean((score >= 0.5) == (labels == 1))), float(loss)


def train_arm(root: Path, name: str, images, split, epochs: int):
    """The recipe (the study's modern stage) with EMA shadows on the side: (model, shadows, fit result)."""
    import math

    from chimuf.core.config import AugmentConfig, ModernConfig, TrainConfig
    from chimuf.ml.architectures.models import resolve_precision
    from chimuf.ml.architectures.modern import seeded_modern
    from chimuf.ml.training.fit import Stopping, fit

    cfg = ModernConfig(epochs=epochs, warmup_epochs=2)
    fit_cfg = replace(TrainConfig(), epochs=epochs, batch_size=cfg.batch_size)
    steps = math.ceil(len(split.train) / cfg.batch_size)
    model = seeded_modern(images.images.shape[1], cfg, resolve_precision("auto"), steps, 42)
    average = WeightAverage(model, EMA_DECAYS)
    train_rows, val_rows = images.rows(split.train), images.rows(split.validation)
    ctx = context(root, name)
    result = fit(model, (images.images[train_rows], images.labels[train_rows]),
                 (images.images[val_rows], images.labels[val_rows]), fit_cfg, AugmentConfig(), 42,
                 ctx.dir / name, ctx.console, name, callbacks=[average.callback],
                 stopping=Stopping.best_of_all())
    return model, average, result


def at_side(model, side: int, cfg_epochs: int):
    """The same weights in a float32 model built for `side`² images (global pooling: any side)."""
    from chimuf.core.config import ModernConfig
    from chimuf.ml.architectures.modern import build_modern

    twin = build_modern(side, ModernConfig(epochs=cfg_epochs, warmup_epochs=2), "float32", fused_norm=False)
    twin.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return twin


def rows_of(name: str, model, average: WeightAverage, sets: dict, split, epochs: int,
            cpu: float, best_epoch: int):
    """Table rows of one arm: kept (best val_loss) epoch, EMA shadows; flips off/on; each side."""
    weights = {f"kept epoch {best_epoch}": model.get_weights()}
    weights.update({f"EMA {d}": average.weights(d) for d in average.decays})
    out = []
    for label, values in weights.items():
        model.set_weights(values)
        for side, images in sets.items():
            twin = at_side(model, side, epochs)
            rows = images.rows(split.validation)
            x, y = np.asarray(images.images[rows]), np.asarray(images.labels[rows])
            for flips in (False, True):
                accuracy, loss = measure(scores(twin, x, flips), y)
                out.append(f"| {name} | {label} | {'yes' if flips else 'no'} | {side} | {accuracy:.3f} | "
                           f"{loss:.3f} | {cpu:.0f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_pieces", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--longer-epochs", type=int, default=30)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = parser.parse_args(argv)
    side = args.image_size
    larger, lower = round(side * 9 / 8 / 8) * 8, round(side * 7 / 8 / 8) * 8
    data = Path(os.environ["CHIMUF_DATA"]) if os.environ.get("CHIMUF_DATA") else None
    header = ("| arm | weights | flips | tested at | val accuracy | val log loss | arm CPU s |\n"
              "|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="chimuf-pieces-") as scratch:
        root = Path(scratch)
        _, images, split = prepare(data, [side, larger, lower], root)
        print(f"{len(split.train)} training / {len(split.validation)} validation images; sides {side} "
              f"(trained), {larger} (tested larger), {lower} (trained lower)", flush=True)
        print(header, flush=True)
        plan = {"base": (side, args.epochs, [side, larger]),
                "longer": (side, args.longer_epochs, [side, larger]),
                "lower": (lower, args.epochs, [lower, side])}
        for arm in args.arms:
            trained_at, epochs, tested = plan[arm]
            started, wall = cpu_s(), time.monotonic()
            model, average, result = train_arm(root, arm, images[trained_at], split, epochs)
            cpu = cpu_s() - started
            name = f"{arm} ({epochs} epochs at {trained_at} px)"
            for row in rows_of(name, model, average, {s: images[s] for s in tested}, split, epochs, cpu,
                               result.best_epoch):
                print(row, flush=True)
            print(f"<!-- {arm}: {time.monotonic() - wall:.0f} s wall -->", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
