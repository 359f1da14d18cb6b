"""How fast a model trains and predicts on this machine: a short probe, a few seconds.

The model trains a few batches of random pixels through the study's own input pipeline
(augmentation included) and predicts a few more; the timed batches (after one warm-up epoch that
traces the graph) give images per second for training and for inference, and with a split's sizes
seconds per epoch (chimuf.stages.plan turns that into the study's plan).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from chimuf.ml.pipeline import make_dataset

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AugmentConfig

EPOCH_OVERHEAD_S = 1.0  # per epoch: the checkpoint written, the validation set up
PROBE_STEPS = 3  # timed batches per probe


@dataclass(frozen=True)
class Pace:
    train_images_per_s: float
    infer_images_per_s: float

    def epoch_s(self, n_train: int, n_validation: int) -> float:
        return n_train / self.train_images_per_s + n_validation / self.infer_images_per_s + EPOCH_OVERHEAD_S


def probe(model: keras.Model, batch_size: int, augment: AugmentConfig | None, seed: int = 0) -> Pace:
    """Training and inference images per second of compiled `model` here, on random pixels."""
    size = int(model.inputs[0].shape[1])
    count = batch_size * PROBE_STEPS
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype(np.int32)
    rows = np.arange(count)

    def data(epoch: int, steps: int, with_augment: bool) -> object:
        return make_dataset(images, labels, rows[: steps * batch_size], batch_size, shuffle=True,
                            seed=seed, epoch=epoch, augment=augment if with_augment else None)

    model.fit(data(0, 1, True), epochs=1, verbose=0, shuffle=False)  # traces the training step
    started = time.perf_counter()
    model.fit(data(1, PROBE_STEPS, True), epochs=1, verbose=0, shuffle=False)
    train_s = time.perf_counter() - started
    model.predict(data(0, 1, False), verbose=0)  # traces the prediction step
    started = time.perf_counter()
    model.predict(data(2, PROBE_STEPS, False), verbose=0)
    infer_s = time.perf_counter() - started
    return Pace(count / train_s, count / infer_s)
