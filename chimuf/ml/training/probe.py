"""How fast a model trains and predicts on this machine: a short probe, a few seconds.

The model trains a few batches of random pixels through the study's own input pipeline
(augmentation included) and predicts a few more; the timed batches give images per second for
training and for inference, and with a split's sizes seconds per epoch (chimuf.stages.plan turns
that into the study's plan).

Only the steady state is timed: a warm-up of WARMUP_STEPS batches traces the graph and lets oneDNN
create its kernels and reorder its weights, and the clock runs from the end of the first timed
batch to the end of the last, so neither `fit`'s start-up nor a slow first step counts. (Timing a
whole 3-batch `fit` after a 1-batch warm-up put model 1 at 13.2 s an epoch in the paper run; it
trained at 5 s.) Each epoch's fixed cost (one `fit` per epoch, its checkpoint) is EPOCH_OVERHEAD_S.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from chimuf.ml.training.pipeline import make_dataset

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AugmentConfig

EPOCH_OVERHEAD_S = 1.0  # per epoch: the checkpoint written, the validation set up
WARMUP_STEPS = 2  # untimed batches first: tracing, oneDNN's kernel creation and weight reorders
PROBE_STEPS = 4  # batches after the warm-up; the time between the ends of the first and the last counts


@dataclass(frozen=True)
class Pace:
    train_images_per_s: float
    infer_images_per_s: float

    def epoch_s(self, n_train: int, n_validation: int) -> float:
        return n_train / self.train_images_per_s + n_validation / self.infer_images_per_s + EPOCH_OVERHEAD_S


def mean_pace(paces: list[Pace]) -> Pace:
    """The pace whose epochs take the mean of `paces`' epoch times (harmonic means of the rates)."""
    count = len(paces)
    return Pace(count / sum(1 / p.train_images_per_s for p in paces),
                count / sum(1 / p.infer_images_per_s for p in paces))


def probe(model: keras.Model, batch_size: int, augment: AugmentConfig | None, seed: int = 0) -> Pace:
    """Training and inference images per second of compiled `model` here, on random pixels."""
    size = int(model.inputs[0].shape[1])
    count = batch_size * max(WARMUP_STEPS, PROBE_STEPS)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype(np.int32)
    rows = np.arange(count)

    def data(epoch: int, steps: int, with_augment: bool) -> object:
        return make_dataset(images, labels, rows[: steps * batch_size], batch_size, shuffle=True,
                            seed=seed, epoch=epoch, augment=augment if with_augment else None)

    model.fit(data(0, WARMUP_STEPS, True), epochs=1, verbose=0, shuffle=False)
    ends = batch_ends("train")
    model.fit(data(1, PROBE_STEPS, True), epochs=1, verbose=0, shuffle=False, callbacks=[ends])
    train_s = step_seconds(ends.ends)
    model.predict(data(0, WARMUP_STEPS, False), verbose=0)
    ends = batch_ends("predict")
    model.predict(data(2, PROBE_STEPS, False), verbose=0, callbacks=[ends])
    infer_s = step_seconds(ends.ends)
    return Pace(batch_size / train_s, batch_size / infer_s)


def batch_ends(mode: str) -> keras.callbacks.Callback:
    """A callback that records when each training (or prediction) batch ends, in `.ends`."""
    import keras

    ends: list[float] = []
    record = {f"on_{mode}_batch_end": lambda _batch, logs=None: ends.append(time.perf_counter())}
    callback = keras.callbacks.LambdaCallback(**record)
    callback.ends = ends
    return callback


def step_seconds(ends: list[float]) -> float:
    """Seconds per batch between the first batch's end and the last's (the steady state)."""
    assert len(ends) >= 2, "the probe times at least two batches"
    return max((ends[-1] - ends[0]) / (len(ends) - 1), 1e-6)
