"""Run the benchmarks in turn: `python -m benchmarks [NAME ...]` (what `nox -s bench` calls).

Without names every benchmark runs with its defaults (a few minutes each on a 2-core machine);
each one's own options are `python -m benchmarks.NAME --help`. The exit status is non-zero only
when a benchmark fails to run, not when it misses its target: targets are read from the printed
tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchmarks import (
    epoch_end,
    fused_norm,
    machine_limit,
    modern_recipe,
    near_duplicates,
    pool_scaling,
    train_throughput,
)

# name → (entry point, the arguments it runs with here)
BENCHMARKS: dict[str, tuple[Callable[[list[str] | None], int], list[str]]] = {
    "train_throughput": (train_throughput.main, []),
    "epoch_end": (epoch_end.main, []),
    "machine_limit": (machine_limit.main, []),
    "modern_recipe": (modern_recipe.main, ["--compare", "--images", "1000"]),
    "fused_norm": (fused_norm.main, ["--throughput", "--accuracy"]),
    "near_duplicates": (near_duplicates.main, []),
    "pool_scaling": (pool_scaling.main, []),
}


def main(argv: list[str] | None = None) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    from chimuf.ml.tfstart import start_tensorflow

    start_tensorflow()  # the benchmarks' tables without TensorFlow's C++ start-up notes
    status = 0
    for name in names:
        entry, arguments = BENCHMARKS[name]
        print(f"\n== {name} ==", flush=True)
        status = max(status, entry(arguments))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
