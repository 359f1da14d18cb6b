"""Run every benchmark in turn: `python -m benchmarks` (what `nox -s bench` calls).

Arguments are passed to each benchmark. The exit status is non-zero only when a benchmark fails
to run, not when it misses its target: targets are read from the printed tables.
"""

from __future__ import annotations

import sys

from benchmarks import epoch_end, train_throughput

BENCHMARKS = [train_throughput.main, epoch_end.main]


def main(argv: list[str] | None = None) -> int:
    status = 0
    for benchmark in BENCHMARKS:
        status = max(status, benchmark(argv))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
