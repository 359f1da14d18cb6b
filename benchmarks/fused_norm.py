"""The modern recipe's batch normalisation: chimuf's FusedBatchNorm against Keras' layer, and precisions.

Three measurements, each against its baseline in the same run:

    --throughput  (default) training images/s of the modern recipe at 128 px, mixed bf16, batch 64,
                  with FusedBatchNorm (chimuf.ml.architectures.fusednorm) and with Keras' BatchNormalization:
                  both models in one process, one warm-up epoch each, then `repeats` epochs each,
                  interleaved; best epoch's images/s and median process CPU ms per image
    --precision   images/s of model 3 and the modern recipe in float32, in mixed bf16 (chimuf's
                  "auto" on a CPU with AVX-512 BF16 or AMX), and in float32 with oneDNN's bf16 math
                  mode (ONEDNN_DEFAULT_FPMATH_MODE=BF16: float32 tensors, bf16 arithmetic inside
                  oneDNN's kernels); one child process each, in turn
    --accuracy    best validation accuracy of the modern recipe trained with each normalisation on
                  the study's split of $CHIMUF_DATA (or generated images), 64 px, same seed

Target: FusedBatchNorm ≥ 1.5× images/s, validation accuracy the same within noise.

    python -m benchmarks.fused_norm [--throughput] [--precision] [--accuracy]
        [--images 640] [--image-size 128] [--repeats 3] [--accuracy-images 1000] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 64
TARGET = 1.5
CHILD = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, {root!r})
from benchmarks.fused_norm import build, time_epochs
model = build({name!r}, {size}, {precision!r}, True)
print(json.dumps(time_epochs({{"x": model}}, {size}, {images}, {repeats})["x"]))
"""
PRECISIONS = (  # label → (Keras precision, extra environment)
    ("float32", "float32", {}),
    ("mixed bf16", "mixed_bfloat16", {}),
    ("float32, oneDNN bf16 math", "float32", {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}),
)


def build(name: str, size: int, precision: str, fused: bool):
    """A compiled model 3 or modern recipe, as the study builds them (seeded alike)."""
    import keras

    from chimuf.core.config import ModernConfig
    from chimuf.ml.architectures.models import build_model, compile_model
    from chimuf.ml.architectures.modern import build_modern, compile_modern

    keras.utils.set_random_seed(0)
    if name == "modern":
        model = build_modern(size, ModernConfig(), precision, fused_norm=fused)
        compile_modern(model, ModernConfig(), 50)
        return model
    model = build_model(name, size, None, precision)
    compile_model(model, 1e-3)
    return model


def time_epochs(models: dict, size: int, images: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per model: best images/s over `repeats` whole epochs and median CPU ms per image.

    One warm-up epoch each (traces the step), then the epochs interleaved, so that load from
    elsewhere on the machine falls on every model alike.
    """
    from benchmarks.machine_limit import epoch_data

    for model in models.values():
        model.fit(epoch_data(size, 2 * BATCH, 0), epochs=1, verbose=0)
    walls: dict[str, list[float]] = {name: [] for name in models}
    cpus: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats):
        for name, model in models.items():
            data = epoch_data(size, images, repeat + 1)
            cpu, wall = cpu_s(), time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(cpu_s() - cpu)
    return {name: {"images_per_s": images / min(walls[name]),
                   "cpu_ms_per_image": 1000 * statistics.median(cpus[name]) / images}
            for name in models}


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def throughput(args: argparse.Namespace) -> None:
    models = {"Keras BatchNormalization": build("modern", args.image_size, "mixed_bfloat16", False),
              "chimuf FusedBatchNorm": build("modern", args.image_size, "mixed_bfloat16", True)}
    timed = time_epochs(models, args.image_size, args.images, args.repeats)
    base, fused = timed.values()
    print(f"\nmodern recipe, training, {args.image_size} px, mixed bf16, batch {BATCH}, {args.images} "
          f"images, best of {args.repeats} epochs")
    print("| batch normalisation | images/s | CPU ms per image |\n|---|---|---|")
    for name, row in timed.items():
        print(f"| {name} | {row['images_per_s']:.0f} | {row['cpu_ms_per_image']:.1f} |")
    ratio = fused["images_per_s"] / base["images_per_s"]
    cpu_ratio = base["cpu_ms_per_image"] / fused["cpu_ms_per_image"]
    print(f"speed-up {ratio:.2f}× images/s, {cpu_ratio:.2f}× CPU time per image "
          f"(target ≥ {TARGET}×: {'met' if ratio >= TARGET else 'not met'})", flush=True)


def precision(args: argparse.Namespace) -> None:
    root = str(Path(__file__).resolve().parents[1])
    print(f"\ntraining images/s by precision, {args.image_size} px, batch {BATCH}, {args.images} images, "
          f"best of {args.repeats} epochs (one child process each)")
    print("| model | precision | images/s | CPU ms per image |\n|---|---|---|---|")
    for name in ("model3", "modern"):
        for label, keras_precision, env in PRECISIONS:
            code = CHILD.format(root=root, name=name, size=args.image_size, precision=keras_precision,
                                images=args.images, repeats=args.repeats)
            done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {name} | {label} | {row['images_per_s']:.0f} | {row['cpu_ms_per_image']:.1f} |",
                  flush=True)


def accuracy(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from benchmarks.modern_recipe import context, prepare
    from benchmarks.train_throughput import data_source
    from chimuf.core.config import AugmentConfig, ModernConfig, TrainConfig
    from chimuf.data.cache import load_images
    from chimuf.ml.architectures.modern import seeded_modern
    from chimuf.ml.training.mixing import Mixing
    from chimuf.stages.train import train_one

    data_dir, source = data_source()
    cfg = ModernConfig(epochs=args.epochs)
    print(f"\nmodern recipe, best validation accuracy after {args.epochs} epochs, {args.accuracy_images} "
          f"photos from {source}, {args.accuracy_size} px, mixed bf16, seed 42")
    print("| batch normalisation | best val accuracy | best val loss | best epoch | wall s |\n"
          "|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="chimuf-fused-") as scratch:
        root = Path(scratch)
        cache, split = prepare(data_dir, args.accuracy_size, args.accuracy_images, root)
        images = load_images(cache)
        fit_cfg = replace(TrainConfig(), epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.epochs,
                          start_from_epoch=0, precision="mixed_bfloat16")
        steps = -(-len(split.train) // cfg.batch_size)
        for fused, name in ((False, "Keras BatchNormalization"), (True, "chimuf FusedBatchNorm")):
            model = seeded_modern(args.accuracy_size, cfg, "mixed_bfloat16", steps, 42, fused_norm=fused)
            wall = time.monotonic()
            outcome = train_one(context(root, f"modern_{fused}"), "modern", "modern", cfg.augment, None,
                                images, split, fit_cfg, AugmentConfig(), 42, model=model,
                                mix=Mixing.of(cfg.mixup, cfg.cutmix))
            print(f"| {name} | {outcome.best_val_accuracy:.3f} | {outcome.best_val_loss:.3f} | "
                  f"{outcome.best_epoch} | {time.monotonic() - wall:.0f} |", flush=True)
    print(f"({len(split.validation)} validation images: one image is {1 / len(split.validation):.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fused_norm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput", action="store_true", help="FusedBatchNorm against Keras' layer")
    parser.add_argument("--precision", action="store_true", help="float32, mixed bf16, oneDNN bf16 math")
    parser.add_argument("--accuracy", action="store_true", help="validation accuracy of both")
    parser.add_argument("--images", type=int, default=640, help="images per timed epoch")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side (timings)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per model")
    parser.add_argument("--accuracy-images", type=int, default=1000, help="photos for --accuracy")
    parser.add_argument("--accuracy-size", type=int, default=64, help="pixels per side for --accuracy")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs for --accuracy")
    args = parser.parse_args(argv)
    if not (args.throughput or args.precision or args.accuracy):
        args.throughput = True
    if args.throughput:
        throughput(args)
    if args.precision:
        precision(args)
    if args.accuracy:
        accuracy(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
