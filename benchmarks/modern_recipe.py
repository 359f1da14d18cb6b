"""The modern recipe against model 3 with augmentation, and which of its pieces pay.

Two measurements on the same split and image cache, in the same run:

    --compare   validation accuracy reached at equal CPU time: model3_aug (the paper's protocol:
                Adam, early stopping) and the modern recipe (ml.architectures.modern), each trained until
                its budget of process CPU seconds is spent (whole epochs; the last epoch that
                started inside the budget counts)
    --ablation  the modern recipe with one piece changed at a time (label smoothing off, constant
                learning rate, no weight decay, no paper augmentation, mixup, CutMix, wider, two
                blocks per stage): best validation accuracy and loss, epochs, CPU seconds

    python -m benchmarks.modern_recipe --compare [--images 1000] [--image-size 64] [--budget-s 300]
    python -m benchmarks.modern_recipe --ablation [--image-size 64] [--epochs 30]

Uses $CHIMUF_DATA (one sub-folder per class) when set, else generated images; the split is the
study's (stratified, duplicate groups kept whole), seed 42.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = {  # name → ModernConfig changes against the recipe's defaults
    "recipe (defaults)": {},
    "no label smoothing": {"label_smoothing": 0.0},
    "constant learning rate": {"schedule": "constant"},
    "no weight decay (Adam)": {"weight_decay": 0.0},
    "no paper augmentation": {"augment": False},
    "+ mixup 0.2": {"mixup": 0.2},
    "+ CutMix 1.0": {"cutmix": 1.0},
    "wider (48-384)": {"widths": (48, 96, 192, 384)},
    "two blocks per stage": {"blocks": 2},
}


def prepare(data_dir: Path | None, image_size: int, images: int, root: Path):
    """Audit, split and cache as the study does (a seeded sample of `images` photos; 0 = all)."""
    from chimuf.core.config import AuditConfig, SplitConfig
    from chimuf.core.console import Console
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset
    from tests.conftest import make_dataset

    console = Console(stream=io.StringIO(), live=False)
    folder = data_dir if data_dir is not None and data_dir.is_dir() else make_dataset(root / "data", 200, 96)
    audit = audit_folder(folder, AuditConfig(), console, max_per_class=images // 2, seed=42)
    split = split_dataset(audit, SplitConfig(), 42)
    cache = build_cache(audit, folder, image_size, root / "cache", console)
    return cache, split


def context(root: Path, name: str):
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext

    ctx = StageContext(name, root / "run" / name, root / "run", Console(stream=io.StringIO(), live=False))
    ctx.dir.mkdir(parents=True, exist_ok=True)
    return ctx


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def run_modern(root: Path, name: str, cache, split, changes: dict, epochs: int) -> dict:
    from chimuf.core.config import AugmentConfig, ModernConfig, TrainConfig
    from chimuf.stages.train import train_modern

    cfg = replace(ModernConfig(epochs=epochs), **changes)
    started, wall = cpu_s(), time.monotonic()
    outcome = train_modern(context(root, safe(name)), cache, split, cfg, TrainConfig(), AugmentConfig(), 42)
    return summary(name, outcome, cpu_s() - started, time.monotonic() - wall)


def run_model3(root: Path, cache, split, epochs: int) -> dict:
    from chimuf.core.config import AugmentConfig, TrainConfig
    from chimuf.data.cache import load_images
    from chimuf.stages.train import train_one

    started, wall = cpu_s(), time.monotonic()
    outcome = train_one(context(root, "model3_aug"), "model3_aug", "model3", True, None, load_images(cache),
                        split, TrainConfig(epochs=epochs), AugmentConfig(), 42)
    return summary("model3_aug (paper protocol)", outcome, cpu_s() - started, time.monotonic() - wall)


def summary(name: str, outcome, cpu: float, wall: float) -> dict:
    return {"name": name, "best_val_accuracy": outcome.best_val_accuracy,
            "best_val_loss": outcome.best_val_loss, "best_epoch": outcome.best_epoch,
            "epochs": outcome.epochs_run, "params": outcome.params, "cpu_s": cpu, "wall_s": wall,
            "history": outcome.history}


def safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def at_budget(result: dict, budget_cpu_s: float) -> tuple[float, int]:
    """Best validation accuracy among the epochs that started within `budget_cpu_s` of CPU time,
    pro rata by wall time (CPU per epoch taken as the run's mean), and how many epochs that is."""
    per_epoch = result["cpu_s"] / max(1, result["epochs"])
    fitting = [r for r in result["history"] if (r.epoch - 1) * per_epoch < budget_cpu_s]
    return max(r.val_accuracy for r in fitting), len(fitting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--images", type=int, default=0, help="photos to use, half per class (0 = all)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=300.0, help="CPU seconds for --compare")
    parser.add_argument("--only", nargs="*", default=None, help="ablation variants to run (default: all)")
    args = parser.parse_args(argv)
    data = Path(os.environ["CHIMUF_DATA"]) if os.environ.get("CHIMUF_DATA") else None
    with tempfile.TemporaryDirectory(prefix="chimuf-modern-") as scratch:
        root = Path(scratch)
        cache, split = prepare(data, args.image_size, args.images, root)
        print(f"{len(split.train)} training / {len(split.validation)} validation images, "
              f"{args.image_size} px", flush=True)
        if args.compare:
            compare(root, cache, split, args)
        if args.ablation:
            ablation(root, cache, split, args)
    return 0


def compare(root: Path, cache, split, args: argparse.Namespace) -> None:
    budget = args.budget_s
    rows = []
    for label, run in (("model3_aug", lambda: run_model3(root, cache, split, 200)),
                       ("modern", lambda: run_modern(root, "modern", cache, split, {}, args.epochs))):
        result = run()
        accuracy, epochs = at_budget(result, budget)
        rows.append((label, accuracy, epochs, result["cpu_s"] / max(1, result["epochs"])))
        print(f"{label}: best validation accuracy {accuracy:.3f} within {budget:.0f} CPU s "
              f"({epochs} epochs of {result['cpu_s'] / max(1, result['epochs']):.1f} CPU s)", flush=True)
    print(f"\n| at {budget:.0f} CPU s | validation accuracy | epochs | CPU s per epoch |\n|---|---|---|---|")
    for label, accuracy, epochs, per in rows:
        print(f"| {label} | {accuracy:.3f} | {epochs} | {per:.1f} |")


def ablation(root: Path, cache, split, args: argparse.Namespace) -> None:
    chosen = {k: v for k, v in VARIANTS.items() if args.only is None or k in args.only}
    print("| variant | best val accuracy | best val loss | best epoch | params | CPU s | wall s |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for name, changes in chosen.items():
        r = run_modern(root, name, cache, split, changes, args.epochs)
        print(f"| {name} | {r['best_val_accuracy']:.3f} | {r['best_val_loss']:.3f} | {r['best_epoch']} | "
              f"{r['params']:,} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
