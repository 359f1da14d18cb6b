"""The six trainings of the paper in a pool of worker processes: one worker with 2 TensorFlow
threads against two workers with 1 thread each, on the same photos, in the same run; and one
worker with 1 thread, whose numbers two 1-thread workers must give again.

    both        models 1-3, each without and with augmentation (chimuf.stages.train.run_trainings),
                2 epochs at 128 px on 87.5 % of the photos, 12.5 % for validation; each
                configuration in a fresh process started as `chimuf study` starts (TensorFlow's
                threads set before its runtime), its stage timed from the first unit to the last
                (the workers' TensorFlow start-up included: the pool pays it)
    check       the numbers (every epoch's losses and accuracies) of 1 × 1 and 2 × 1 are compared:
                a fixed thread count per unit makes them identical whatever the pool's size; those
                of 1 × 2 are compared too (the thread count may change the last digits: it is
                part of the fingerprint, `train.threads_per_unit`)
    scaling     this machine's cores, and the pool the defaults (`train.workers = 0`,
                `train.threads_per_unit`) and one thread per unit give here; the GPU plan (one
                worker per GPU) where TensorFlow sees GPUs

    CHIMUF_DATA=../shared/data/chihuahua-muffin python -m benchmarks.pool_scaling [--images 640]
        [--image-size 128] [--epochs 2]

Target: two 1-thread workers ≥ 1.15× one 2-thread worker on a 2-core machine, and the numbers of
one 1-thread worker, identically. The trainings' own seconds (epochs only, summed) against the
stage's wall time show what the pool overlapped and what the workers' start-up cost.
Uses $CHIMUF_DATA (one sub-folder per class) when set, else generated images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.train_throughput import data_source, decode_once, log, pick_files

TARGET_RATIO = 1.15
BASELINE, SAME_THREADS, POOLED = (1, 2), (1, 1), (2, 1)  # (workers, threads per unit)
CONFIGURATIONS = (BASELINE, SAME_THREADS, POOLED)
TIMINGS = ("wall_s", "images_per_s")  # the parts of an epoch's record a clock measured


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pool_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="photos used (half per class)")
    parser.add_argument("--image-size", type=int, default=128, help="pixels per side")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # setup.json: one configuration
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the photos, decoded once, as the cache stage leaves them -----------------------------------


def write_setup(files: list[Path], labels: list[str], image_size: int, epochs: int, scratch: Path) -> Path:
    """The cache (.npy) and the split both configurations train on, as JSON for their processes."""
    classes = sorted(set(labels))
    images_path = scratch / "images.npy"
    np.save(images_path, decode_once(files, image_size))
    paths = [f"{label}/{index:05d}" for index, label in enumerate(labels)]  # row names, unique
    validation = paths[::8]  # 12.5 %, both classes (rows alternate by class in blocks)
    setup = {"images_path": str(images_path), "paths": paths, "labels": [classes.index(x) for x in labels],
             "classes": classes, "image_size": image_size, "epochs": epochs,
             "train": sorted(set(paths) - set(validation)), "validation": sorted(validation)}
    target = scratch / "setup.json"
    target.write_text(json.dumps(setup), encoding="utf-8")
    return target


# --- one configuration, in its own process -----------------------------------------------------


def run_configuration(setup_path: Path, workers: int, threads: int) -> int:
    """The six trainings with `workers` × `threads`; prints one JSON line: wall time, numbers."""
    from chimuf.core.config import AugmentConfig, TrainConfig
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.core.results import CacheOutcome, SplitOutcome
    from chimuf.ml.tfstart import start_tensorflow
    from chimuf.ml.training.pool import local_gpus
    from chimuf.stages.train import run_trainings

    start_tensorflow(threads)
    setup = json.loads(setup_path.read_text(encoding="utf-8"))
    cache = CacheOutcome(setup["images_path"], setup["paths"], setup["labels"], setup["image_size"], "bench")
    split = SplitOutcome(setup["classes"], setup["train"], setup["validation"], [], [], [], "bench")
    cfg = TrainConfig(epochs=setup["epochs"], workers=workers, threads_per_unit=threads)
    with tempfile.TemporaryDirectory(prefix="chimuf-pool-") as run_dir:
        ctx = StageContext("train", Path(run_dir) / "train", Path(run_dir), Console(live=False))
        started = time.perf_counter()
        outcome = run_trainings(ctx, cache, split, cfg, AugmentConfig(), seed=42)
        wall = time.perf_counter() - started
    numbers = {t.name: [{k: v for k, v in vars(r).items() if k not in TIMINGS} for r in t.history]
               for t in outcome.trainings}
    images = sum(len(split.train) * t.epochs_run for t in outcome.trainings)
    trained = sum(t.wall_s for t in outcome.trainings)
    print(json.dumps({"wall_s": wall, "images": images, "trained_s": trained, "numbers": numbers,
                      "gpus": local_gpus()}))
    return 0


def measure(setup_path: Path, workers: int, threads: int) -> dict:
    log(f"{workers} worker(s) x {threads} thread(s): the six trainings")
    done = subprocess.run([sys.executable, "-m", "benchmarks.pool_scaling", "--child", str(setup_path),
                           "--workers", str(workers), "--threads", str(threads)],
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    if args.child is not None:
        return run_configuration(args.child, args.workers, args.threads)
    data_dir, source = data_source()
    with tempfile.TemporaryDirectory(prefix="chimuf-bench-") as scratch:
        files, labels = pick_files(data_dir, args.images, Path(scratch))
        print(f"the six trainings in a pool: {len(files)} images from {source}, {args.image_size} px, "
              f"{args.epochs} epochs each, models 1-3 without and with augmentation")
        setup = write_setup(files, labels, args.image_size, args.epochs, Path(scratch))
        runs = {config: measure(setup, *config) for config in CONFIGURATIONS}
    print_table(runs)
    print_scaling(runs[BASELINE]["gpus"])
    return 0


def print_table(runs: dict[tuple[int, int], dict]) -> None:
    print("\n| workers × threads | stage wall (s) | training images/s over the stage | "
          "trainings' own seconds, summed |\n|---|---|---|---|")
    for (workers, threads), run in runs.items():
        print(f"| {workers} × {threads} | {run['wall_s']:.1f} | {run['images'] / run['wall_s']:.0f} | "
              f"{run['trained_s']:.1f} |")
    ratio = runs[BASELINE]["wall_s"] / runs[POOLED]["wall_s"]
    same = runs[SAME_THREADS]["numbers"] == runs[POOLED]["numbers"]
    met = ratio >= TARGET_RATIO and same
    print(f"\nSpeed-up 2 × 1 over 1 × 2: {ratio:.2f}x; numbers of 2 × 1 and 1 × 1 "
          f"{'identical' if same else 'DIFFER'} (target: ≥ {TARGET_RATIO}x and identical): "
          f"{'met' if met else 'MISSED'}")
    print_differences(runs[SAME_THREADS]["numbers"], runs[POOLED]["numbers"], "1 × 1", "2 × 1")
    threads_matter = runs[BASELINE]["numbers"] != runs[SAME_THREADS]["numbers"]
    print(f"1 × 2 against 1 × 1: the thread count {'changes' if threads_matter else 'does not change'} "
          "the numbers" + (" (largest difference below)" if threads_matter else ""))
    if threads_matter:
        print_differences(runs[BASELINE]["numbers"], runs[SAME_THREADS]["numbers"], "1 × 2", "1 × 1")


def print_differences(first: dict, second: dict, one: str, other: str) -> None:
    """The largest difference between two runs' epoch numbers, and where."""
    gaps = [(abs(a[key] - b[key]), name, a["epoch"], key) for name, history in first.items()
            for a, b in zip(history, second.get(name, []), strict=False) for key in a if a[key] != b[key]]
    if gaps:
        gap, name, epoch, key = max(gaps)
        print(f"  largest difference {one} / {other}: {key} of {name} epoch {epoch}, {gap:.2e} "
              f"({len(gaps)} values differ)")


def print_scaling(gpus: list[str]) -> None:
    """What the pool does on this machine: its cores, the defaults' pool, one thread per unit."""
    from chimuf.core.config import TrainConfig
    from chimuf.ml.training.pool import machine_cores, worker_slots

    cores, threads = machine_cores(), TrainConfig().threads_per_unit
    default = worker_slots(0, threads, cores, gpus, 6)
    single = worker_slots(0, 1, cores, gpus, 6)
    print(f"this machine: {cores} cores; the defaults (workers = 0, threads_per_unit = {threads}) run "
          f"{len(default)} worker(s) for the six trainings; threads_per_unit = 1 runs {len(single)}")
    if gpus:
        print(f"GPUs seen: {', '.join(gpus)}: one worker per GPU ({len(default)} at once), each seeing "
              "only its own (CUDA_VISIBLE_DEVICES)")
    else:
        print("no GPU seen: on a machine with several, the pool runs one worker per GPU")


if __name__ == "__main__":
    sys.exit(main())
