"""Input pipelines: batches of raw pixels from the decoded image cache, augmented on the TF graph.

Images are decoded once (by the cache stage) into a uint8 array (N, S, S, 3), memory-mapped. A
training epoch only gathers rows of that array, so no JPEG is read during training:

    row indices, shuffled by (seed, epoch)       int64 (N,)
      → batch                                      (B,)
      → gather rows from the array (parallel)      uint8   (B, S, S, 3)  → float32 0-255
      → augment (parallel, optional)               float32 (B, S, S, 3)
      → prefetch

Everything random in an epoch is a function of (seed, epoch) alone: the shuffle is drawn in NumPy
from that pair, and batch b is augmented with stateless ops keyed on (epoch seed, b) (see
chimuf.ml.training.augment). Both maps are pure, so they run in parallel; `deterministic=True` keeps the
batches in order.

tf.data's autotuning is off, with one parallel call per core and two batches prefetched instead.
Its optimiser thread sleeps between rounds (10 ms, doubling up to a minute) and, in TensorFlow
2.21, is not woken when an iterator is destroyed, so the end of each Keras epoch waited for the
next round: a 25 s epoch took 41 s, a 8 s one 10 s (benchmarks/epoch_end.py measures it).

The gather is a `numpy_function` over the memory-mapped cache: measured here on a 3 300 × 128 px
cache it serves 33-49k images/s, as fast as `tf.gather` from an in-memory tensor (which would
first copy the whole cache into memory), and far above what training consumes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.config import AugmentConfig
from chimuf.ml.training.augment import augment_batch, is_identity
from chimuf.ml.training.mixing import Mixing, mix_batch
from chimuf.ml.training.seeds import AUGMENT, MIX, SHUFFLE, derive_seed

if TYPE_CHECKING:
    import tensorflow as tf

PARALLEL_CALLS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
PREFETCH_BATCHES = 2


def epoch_order(rows: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The rows in the order epoch `epoch` visits them: fixed when not shuffling."""
    rows = np.asarray(rows, dtype=np.int64)
    if not shuffle:
        return rows
    rng = np.random.default_rng(derive_seed(seed, epoch, SHUFFLE))
    return rows[rng.permutation(len(rows))]


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    augment: AugmentConfig | None = None,
    mix: Mixing | None = None,
) -> tf.data.Dataset:
    """Batches (images float32 (B, S, S, 3) on 0-255, labels float32 (B,)) of `rows` of `images`.

    `images` is the uint8 cache array (or any array of that shape, memory-mapped or not);
    `labels[i]` is the label of `images[i]`. With `shuffle`, the order is a pure function of
    (seed, epoch); without, `rows` are served in the order given (for evaluation). With
    `augment`, the batches are augmented, and with `mix` mixed (mixup/CutMix, soft labels), again
    as a pure function of (seed, epoch).
    """
    import tensorflow as tf

    check_arrays(images, labels, rows)
    order = epoch_order(rows, shuffle, seed, epoch)
    size = images.shape[1]

    def gather(batch_rows: np.ndarray) -> np.ndarray:
        return np.asarray(images[batch_rows])  # (B, S, S, 3) uint8, read from the memmap

    def load(batch_rows: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(gather, [batch_rows], tf.uint8, stateful=False)
        pixels.set_shape([None, size, size, 3])
        return tf.cast(pixels, tf.float32), batch_labels

    targets = np.asarray(labels, dtype=np.float32)[order]
    dataset = tf.data.Dataset.from_tensor_slices((order, targets)).batch(batch_size)
    dataset = dataset.map(load, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    augmenting = augment is not None and not is_identity(augment)
    if augmenting or mix is not None:
        augment_seed, mix_seed = derive_seed(seed, epoch, AUGMENT), derive_seed(seed, epoch, MIX)

        def transform(index: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            """Batch `index` of the epoch: augmented, then mixed, each keyed on (its seed, index)."""
            pixels, targets = batch
            if augmenting:
                batch_seed = tf.stack([tf.constant(augment_seed, tf.int64), index])
                pixels = augment_batch(pixels, augment, batch_seed)
            if mix is not None:
                batch_seed = tf.stack([tf.constant(mix_seed, tf.int64), index])
                pixels, targets = mix_batch(pixels, targets, mix.mixup_alpha, mix.cutmix_alpha, batch_seed)
            return pixels, targets

        dataset = dataset.enumerate().map(transform, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(without_autotune())


def without_autotune() -> tf.data.Options:
    """Options that turn tf.data's autotuning off (see the module doc for why)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def check_arrays(images: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
    """Internal invariants of the arrays handed in by the stages (not user input)."""
    assert images.ndim == 4 and images.shape[3] == 3 and images.dtype == np.uint8, (
        f"images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}"
    )
    assert len(labels) == len(images), f"{len(labels)} labels for {len(images)} images"
    rows = np.asarray(rows)
    assert rows.size == 0 or (rows.min() >= 0 and rows.max() < len(images)), "row index out of range"
