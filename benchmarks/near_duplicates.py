"""The audit's near-duplicate search: multi-index hashing against the all-pairs search it replaced.

chimuf.data.audit finds the groups of perceptual hashes linked by distances ≤ d (4 bits by
default) by bucketing on d + 1 bands of the 64 bits and checking only same-bucket pairs. The
baseline is the search chimuf shipped before (kept here, not in the package): every pair, 1 024
rows of the N × N XOR matrix at a time, then connected components. Both run on the same hashes in
the same run; reported per size: whether the groups are the same, seconds, and peak memory
(tracemalloc: numpy's and scipy's arrays).

Hash sets:
    uniform     N random 64-bit hashes: few band collisions, the search's easy case
    clustered   N hashes in clusters (a random centre, copies with 0-6 of its bits flipped, cluster
                sizes 1 + geometric(mean 2)): like a folder of re-encoded and resized copies
    photos      the pHashes of $CHIMUF_DATA's photos (when set), as the audit computes them

The all-pairs search needs a 1 024 × N uint64 block (8 GB at 10^6) and N²/2 popcounts, so above
`--all-pairs-max` hashes it is not run: its time is extrapolated from the largest size measured
(× (N / n)², it is quadratic) and its block's memory computed; those cells are marked "~".
Target: 10^6 hashes in ≤ 1 GB and far less than quadratic time, the same groups wherever both ran.

    python -m benchmarks.near_duplicates [--sizes 100000 1000000] [--distance 4] [--all-pairs-max 100000]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.train_throughput import data_source

TARGET_BYTES = 1 << 30
ALL_PAIRS_ROWS = 1024  # the old search's rows per block
ALL_PAIRS_BYTES_PER_CELL = 8 + 1 + 1  # uint64 XOR, uint8 popcount, bool comparison


@dataclass
class Measured:
    seconds: float
    peak_bytes: int
    groups: list[list[int]] | None  # sorted member lists of groups with ≥ 2 hashes; None: not run
    estimated: bool = False


def all_pairs_components(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """The search chimuf shipped before: every pair, a block of rows at a time (the baseline)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    found_rows, found_cols = [], []
    for start in range(0, n, ALL_PAIRS_ROWS):
        stop = min(start + ALL_PAIRS_ROWS, n)
        block = hashes[start:stop, None] ^ hashes[None, start:]  # (rows, N - start) uint64
        i, j = np.nonzero(np.bitwise_count(block) <= max_distance)
        upper = j > i
        found_rows.append(i[upper] + start)
        found_cols.append(j[upper] + start)
    rows, cols = np.concatenate(found_rows), np.concatenate(found_cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def multi_index_components(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    from chimuf.data.audit import near_components

    return near_components(hashes, max_distance)


def groups_of(component: np.ndarray) -> list[list[int]]:
    """The components with ≥ 2 members as sorted index lists, sorted: comparable across searches."""
    order = np.argsort(component, kind="stable")  # (N,) indices grouped by component
    sorted_ids = component[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    pieces = np.split(order, starts[1:])
    return sorted(sorted(p.tolist()) for p in pieces if len(p) > 1)


def measure(search: Callable[[np.ndarray, int], np.ndarray], hashes: np.ndarray,
            max_distance: int) -> Measured:
    tracemalloc.start()
    started = time.perf_counter()
    component = search(hashes, max_distance)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return Measured(seconds, peak, groups_of(component))


def extrapolated(largest: tuple[int, Measured] | None, n: int) -> Measured | None:
    """The all-pairs search at `n` hashes from its largest measured size: quadratic time, one block."""
    if largest is None:
        return None
    size, measured = largest
    block = ALL_PAIRS_ROWS * n * ALL_PAIRS_BYTES_PER_CELL
    return Measured(measured.seconds * (n / size) ** 2, block, None, estimated=True)


def uniform_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)


def clustered_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Clusters of near copies: a random centre and copies with 0-6 random bits flipped."""
    sizes = 1 + rng.geometric(0.5, n)  # mean 3 hashes per cluster
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    centres = np.repeat(uniform_hashes(len(sizes), rng), sizes)[:n]  # (N,)
    flips = np.zeros(n, dtype=np.uint64)
    for _ in range(6):  # up to 6 distinct-or-repeated bit positions per copy
        bit = rng.integers(0, 64, n).astype(np.uint64)
        flips ^= np.where(rng.random(n) < 0.5, np.uint64(1) << bit, np.uint64(0))
    return centres ^ flips


def photo_hashes(data_dir: Path) -> np.ndarray:
    """The pHashes of the usable photos, as the audit computes them (one pass over the folder)."""
    from chimuf.core.config import AuditConfig
    from chimuf.core.console import Console
    from chimuf.data.audit import audit_folder

    outcome = audit_folder(data_dir, AuditConfig(), Console(stream=io.StringIO(), live=False))
    return np.array([int(r.phash, 16) for r in outcome.files if r.phash], dtype=np.uint64)


def cell(m: Measured | None) -> tuple[str, str]:
    if m is None:
        return "-", "-"
    mark = "~" if m.estimated else ""
    return f"{mark}{m.seconds:.2f}", f"{mark}{m.peak_bytes / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.near_duplicates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="hashes per set")
    parser.add_argument("--distance", type=int, default=4, help="near-duplicate distance in bits")
    parser.add_argument("--all-pairs-max", type=int, default=100_000,
                        help="largest set the all-pairs search runs on (larger: extrapolated)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(42)
    data_dir, source = data_source()

    sets: list[tuple[str, np.ndarray]] = []
    if data_dir is not None and data_dir.is_dir():
        sets.append((f"photos ({source})", photo_hashes(data_dir)))
    for n in args.sizes:
        sets.append(("uniform", uniform_hashes(n, rng)))
        sets.append(("clustered", clustered_hashes(n, rng)))

    print(f"near-duplicate search, distance {args.distance} bits: multi-index hashing against all pairs "
          f"(~: extrapolated above {args.all_pairs_max:,} hashes)")
    print("| hashes | set | groups | same groups | all pairs s | multi-index s | speed-up "
          "| all pairs MiB | multi-index MiB | ≤ 1 GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for search in (multi_index_components, all_pairs_components):  # imports and first calls untimed
        search(uniform_hashes(100, rng), args.distance)
    largest: dict[str, tuple[int, Measured]] = {}
    for name, hashes in sets:
        n = len(hashes)
        kind = name.split(" ")[0]
        new = measure(multi_index_components, hashes, args.distance)
        if n <= args.all_pairs_max:
            old: Measured | None = measure(all_pairs_components, hashes, args.distance)
            largest[kind] = (n, old)
        else:
            old = extrapolated(largest.get(kind), n)
        same = "-" if old is None or old.groups is None else ("yes" if old.groups == new.groups else "NO")
        speed = "-" if old is None else f"{'~' if old.estimated else ''}{old.seconds / new.seconds:,.1f}×"
        old_s, old_mb = cell(old)
        new_s, new_mb = cell(new)
        fits = "yes" if new.peak_bytes <= TARGET_BYTES else "NO"
        print(f"| {n:,} | {name} | {len(new.groups or []):,} | {same} | {old_s} | {new_s} | {speed} "
              f"| {old_mb} | {new_mb} | {fits} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
