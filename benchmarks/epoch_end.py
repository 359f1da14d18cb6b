"""End of an epoch: chimuf's input pipeline against the same pipeline with tf.data autotuning on.

chimuf trains one `model.fit(epochs=1)` per epoch on a fresh dataset (chimuf.ml.training.fit), so each epoch
ends by destroying its iterator. With tf.data's autotuning on, that destruction waits for the
autotuner's next optimisation round (rounds at 10 ms, doubling up to a minute, TensorFlow 2.21), so
the epoch's wall time is rounded up to the next round: the process sits idle for the rest.
chimuf's pipeline turns autotuning off (chimuf.ml.training.pipeline). Both sides here are
`chimuf.ml.training.pipeline.make_dataset`; the baseline only turns autotuning back on.

Model 3 trains with augmentation, batch 64, chimuf's precision, one warm-up epoch each, then
`repeats` epochs each, interleaved. Reported per side: median images/s over whole epochs, and the
median idle tail (from the end of the last batch to fit's return). Target: ratio ≥ 1 and a tail
under 0.5 s.

    python -m benchmarks.epoch_end [--images 640] [--image-size 128] [--repeats 6]

Uses $CHIMUF_DATA (one sub-folder per class) when set, else generated images.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.train_throughput import benchmark_options, data_source, decode_once, log, pick_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET_TAIL_S = 0.5


def epoch_runner(images: np.ndarray, labels: np.ndarray,
                 autotune: bool) -> Callable[[int], tuple[float, float]]:
    """A function training one epoch of model 3; it returns (wall s, idle tail s)."""
    import keras
    import tensorflow as tf

    from chimuf.core.config import AugmentConfig
    from chimuf.ml.architectures.models import build_trainable_model, resolve_precision
    from chimuf.ml.training.pipeline import make_dataset

    model = build_trainable_model("model3", images.shape[1], None, resolve_precision("auto"), 1e-3)
    rows = np.arange(len(labels))
    last_batch: dict[str, float] = {}
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda _batch, logs=None: last_batch.update(at=time.perf_counter()))

    def epoch(e: int) -> tuple[float, float]:
        data = make_dataset(images, labels, rows, 64, shuffle=True, seed=0, epoch=e, augment=AugmentConfig())
        if autotune:
            logging.getLogger("absl").setLevel(logging.ERROR)  # "changing the value of option"
            options = tf.data.Options()
            options.autotune.enabled = True
            data = data.with_options(options)
        started = time.perf_counter()
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
        ended = time.perf_counter()
        return ended - started, ended - last_batch["at"]

    return epoch


def main(argv: list[str] | None = None) -> int:
    args = benchmark_options("python -m benchmarks.epoch_end", __doc__, 640, 6, argv)
    data_dir, source = data_source()
    with tempfile.TemporaryDirectory(prefix="chimuf-bench-") as scratch:
        files, names = pick_files(data_dir, args.images, Path(scratch))
        classes = sorted(set(names))
        print(f"end of epoch: {len(files)} images from {source}, {args.image_size} px, model 3 with "
              f"augmentation, median of {args.repeats} epochs")
        images = decode_once(files, args.image_size)
    labels = np.array([classes.index(name) for name in names], dtype=np.int32)
    runs = {"chimuf (autotune off)": epoch_runner(images, labels, autotune=False),
            "autotune on": epoch_runner(images, labels, autotune=True)}
    for name, run in runs.items():
        log(f"warming up {name}")
        run(0)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    tails: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(1, args.repeats + 1):
        for name, run in runs.items():
            wall, tail = run(r)
            walls[name].append(wall)
            tails[name].append(tail)
            log(f"round {r}: {name} {len(files) / wall:.0f} images/s, idle tail {tail:.2f} s")

    print("\n| pipeline | images/s median | idle tail median (s) | idle tail max (s) |\n|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {len(files) / statistics.median(walls[name]):.0f} | "
              f"{statistics.median(tails[name]):.2f} | {max(tails[name]):.2f} |")
    ours, baseline = runs
    ratio = statistics.median(walls[baseline]) / statistics.median(walls[ours])
    tail = statistics.median(tails[ours])
    met = ratio >= 1 and tail < TARGET_TAIL_S
    print(f"\nSpeed-up {ratio:.2f}x (median epoch); chimuf's idle tail {tail:.2f} s "
          f"(target: ratio ≥ 1 and tail < {TARGET_TAIL_S} s): {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
