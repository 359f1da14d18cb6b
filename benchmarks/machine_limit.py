"""This machine's bf16 limit, and how close each of chimuf's architectures trains to it.

    peak        the best bf16 rate TensorFlow reaches here: square matmuls and 3×3 convolutions of
                several sizes (oneDNN runs both on AMX where the CPU has it), best of a few repeats
    achieved    each architecture the study trains (models 1-3, the tuned model the paper-profile
                search picked, the modern recipe), trained as the study trains it (decoded cache →
                tf.data → augmentation on the graph → bf16, batch 64): images/s, GFLOP/s counted
                analytically (conv 2·H·W·k²·Cin·Cout, dense 2·in·out per image forward, a training
                step taken as 3 × forward) and that as a share of the peak
    --profile   one training epoch of an architecture under ONEDNN_VERBOSE, in a child process:
                milliseconds per step by oneDNN primitive (and whether it ran on AMX), and the rest
                of the step (TensorFlow's own ops: casts, dropout, the optimizer, the pipeline)

    python -m benchmarks.machine_limit [--image-size 128] [--images 640] [--profile model3 tuned]

Uses random pixels (throughput does not depend on what the images show).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.train_throughput import forward_flops

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tuned model the paper profile's search picked (README): the heaviest the study trains.
TUNED = {"conv1_filters": 64, "conv2_filters": 128, "conv3_filters": 256, "dense_units": 64,
         "dropout_conv": 0.05, "dropout_dense": 0.2}
ARCHITECTURES = ("model1", "model2", "model3", "tuned", "modern")
MARK = "=====timed epoch====="


@dataclass
class Achieved:
    name: str
    params: int
    gflop_per_image: float  # training: 3 × forward
    images_per_s: float

    @property
    def gflops(self) -> float:
        return self.images_per_s * self.gflop_per_image


def best_rate(run, flops: float, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of `repeats` timed calls of `run` (after one warm-up call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


def peak_rates() -> dict[str, float]:
    """The best bf16 (and float32, for reference) matmul and 3×3 conv rates, GFLOP/s."""
    import tensorflow as tf

    rates: dict[str, float] = {}
    for dtype in (tf.bfloat16, tf.float32):
        for n in (1024, 2048, 4096):
            a = tf.cast(tf.random.normal((n, n)), dtype)
            b = tf.cast(tf.random.normal((n, n)), dtype)
            multiply = tf.function(lambda a=a, b=b: tf.matmul(a, b))
            rates[f"matmul {dtype.name} {n}"] = best_rate(lambda m=multiply: m().numpy(), 2 * n**3)
        for side, cin, cout in ((32, 128, 256), (64, 128, 128), (16, 256, 512)):
            x = tf.cast(tf.random.normal((64, side, side, cin)), dtype)
            w = tf.cast(tf.random.normal((3, 3, cin, cout)), dtype)
            conv = tf.function(lambda x=x, w=w: tf.nn.conv2d(x, w, 1, "SAME"))
            flops = 2 * 64 * side * side * 9 * cin * cout
            name = f"conv3x3 {dtype.name} {side}px {cin}->{cout}"
            rates[name] = best_rate(lambda c=conv: c().numpy(), flops)
    return rates


def build(name: str, size: int):
    from chimuf.core.config import ModernConfig
    from chimuf.ml.architectures.models import build_model, compile_model
    from chimuf.ml.architectures.modern import build_modern, compile_modern

    if name == "modern":
        model = build_modern(size, ModernConfig(), "mixed_bfloat16")
        compile_modern(model, ModernConfig(), 50)
        return model
    model = build_model(name, size, TUNED if name == "tuned" else None, "mixed_bfloat16")
    compile_model(model, 1e-3)
    return model


def epoch_data(size: int, count: int, epoch: int, batch: int = 64):
    import numpy as np

    from chimuf.core.config import AugmentConfig
    from chimuf.ml.training.pipeline import make_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = (np.arange(count) % 2).astype(np.int32)
    return make_dataset(images, labels, np.arange(count), batch, shuffle=True, seed=1, epoch=epoch,
                        augment=AugmentConfig())


def achieved(name: str, size: int, count: int, repeats: int = 3) -> Achieved:
    """Images/s of the fastest of `repeats` epochs of `count` images, as the study trains."""
    model = build(name, size)
    model.fit(epoch_data(size, 128, 0), epochs=1, verbose=0)  # traces the step
    times = []
    for repeat in range(repeats):
        data = epoch_data(size, count, repeat + 1)
        started = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        times.append(time.perf_counter() - started)
    return Achieved(name, model.count_params(), 3 * forward_flops(model) / 1e9, count / min(times))


# --- the per-op profile, from oneDNN's own timings ---------------------------------------------

CHILD = """
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {root!r})
from benchmarks.machine_limit import build, epoch_data, MARK
model = build({name!r}, {size})
model.fit(epoch_data({size}, 128, 0), epochs=1, verbose=0)
data = epoch_data({size}, {count}, 1)
print(MARK, flush=True)
started = time.perf_counter()
model.fit(data, epochs=1, verbose=0)
print(MARK, time.perf_counter() - started, flush=True)
"""


def profile(name: str, size: int, count: int) -> str:
    """A table of one timed epoch's oneDNN primitives: ms per step by kind, direction and kernel."""
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=root, name=name, size=size, count=count)],
                          env=dict(os.environ, ONEDNN_VERBOSE="1"), capture_output=True, text=True,
                          check=True)
    lines = done.stdout.splitlines()
    start = lines.index(MARK)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(MARK))
    wall_ms = float(lines[end].split()[-1]) * 1000
    steps = -(-count // 64)
    by_kind: collections.Counter = collections.Counter()
    for line in lines[start + 1:end]:
        parts = line.split(",")
        if len(parts) < 6 or parts[0] != "onednn_verbose" or parts[2] != "primitive" or parts[3] != "exec":
            continue
        kind, impl, direction = parts[5], parts[6], parts[7]
        amx = "AMX" if "amx" in impl else ("AVX-512 BF16" if "bf16" in impl else re.sub(r":.*", "", impl))
        by_kind[(kind, direction, amx)] += float(parts[-1])
    rows = [f"  {'oneDNN primitive':<28}{'direction':<18}{'kernel':<16}{'ms/step':>9}{'share':>8}"]
    onednn = sum(by_kind.values())
    for (kind, direction, amx), ms in by_kind.most_common():
        rows.append(f"  {kind:<28}{direction:<18}{amx:<16}{ms / steps:>9.2f}{ms / wall_ms:>8.1%}")
    rows.append(f"  {'everything else (TensorFlow ops: casts, dropout, optimizer, pipeline)':<70}"
                f"{(wall_ms - onednn) / steps:>9.2f}{(wall_ms - onednn) / wall_ms:>8.1%}")
    rows.append(f"  one step: {wall_ms / steps:.1f} ms at batch 64 (the timed epoch under verbose logging, "
                "which slows it a little)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.machine_limit", description=__doc__)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=640, help="images per timed epoch")
    parser.add_argument("--profile", nargs="*", default=None, metavar="ARCHITECTURE",
                        help=f"profile these ({', '.join(ARCHITECTURES)}) instead of measuring the rates")
    args = parser.parse_args(argv)
    if args.profile is not None:
        for name in args.profile or ("model3", "tuned"):
            print(f"\n{name} at {args.image_size} px, one epoch of {args.images} images:")
            print(profile(name, args.image_size, args.images), flush=True)
        return 0
    peaks = peak_rates()
    peak_name, peak = max(((k, v) for k, v in peaks.items() if "bfloat16" in k), key=lambda kv: kv[1])
    print("peak rates here (GFLOP/s, best of 5):")
    for name, rate in peaks.items():
        print(f"  {name:<34}{rate:>8.0f}")
    print(f"\nthe machine's bf16 limit, as reached: {peak:.0f} GFLOP/s ({peak_name})\n")
    print(f"{'architecture':<10}{'params':>12}{'GFLOP/img':>11}{'images/s':>10}{'GFLOP/s':>9}{'of peak':>9}")
    for name in ARCHITECTURES:
        a = achieved(name, args.image_size, args.images)
        print(f"{a.name:<10}{a.params:>12,}{a.gflop_per_image:>11.2f}{a.images_per_s:>10.0f}{a.gflops:>9.0f}"
              f"{a.gflops / peak:>9.1%}", flush=True)
    median = statistics.median(v for k, v in peaks.items() if "bfloat16" in k)
    print(f"\n(median of the bf16 peaks: {median:.0f} GFLOP/s; a training step is taken as 3 × its "
          "forward FLOPs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
