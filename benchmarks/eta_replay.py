"""How right the study's ETA was: a finished run's study.log replayed against what really happened.

Every epoch line of study.log ends with the clock's "study ETA 1h02m (40m-1h30m)" (chimuf.core.plan,
the range since it has one). The run's real remaining time at a line is the last line's timestamp
minus that line's. For each checkpoint (10 %, 25 %, 50 % of the run's wall time by default) the
first ETA said at or after it is compared with the truth: the ratio ETA / real and whether the real
time fell inside the range. Target (issue 26): after 10 % of the run, within ±25 % of the truth.

    python -m benchmarks.eta_replay RUN/study.log [--at 0.1 0.25 0.5]

A resumed run appends to the same log: replay a log of one uninterrupted run (the clock starts
again with each attempt, so the wall time between attempts is not the study's).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

TARGET = 0.25
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")
ETA = re.compile(r"study ETA (\S+)(?: \((\S+)-(\S+)\))?\s*$")
PART = re.compile(r"(\d+)([hms])")


@dataclass(frozen=True)
class Said:
    at_s: float  # seconds since the run's first line
    eta_s: float
    low_s: float | None
    high_s: float | None


def seconds(text: str) -> float:
    """"1h02m", "4m05s", "53s" (chimuf.core.console.format_seconds) → seconds."""
    parts = PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


def read_log(path: Path) -> tuple[list[Said], float]:
    """Every ETA the log says, with when; and the run's whole wall time (first to last line)."""
    said: list[Said] = []
    first = last = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
        first = first or when
        last = when
        eta = ETA.search(line)
        if eta is not None:
            low, high = eta.group(2), eta.group(3)
            said.append(Said((when - first).total_seconds(), seconds(eta.group(1)),
                             seconds(low) if low else None, seconds(high) if high else None))
    if first is None or last is None:
        raise SystemExit(f"`{path}` has no timestamped lines: expected a chimuf study.log")
    return said, (last - first).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eta_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="a finished run's study.log")
    parser.add_argument("--at", type=float, nargs="+", default=[0.1, 0.25, 0.5],
                        help="checkpoints, as shares of the run's wall time")
    args = parser.parse_args(argv)
    said, total = read_log(args.log)
    print(f"{args.log}: {len(said)} ETA lines over {total / 60:.1f} min")
    print("| at | ETA said | range said | really left | ETA / real | within ±25 % | real in range |\n"
          "|---|---|---|---|---|---|---|")
    for share in args.at:
        first = next((s for s in said if s.at_s >= share * total), None)
        if first is None:
            print(f"| {share:.0%} | (no ETA after it) | | | | | |")
            continue
        real = total - first.at_s
        ratio = first.eta_s / real if real > 0 else float("inf")
        span = "-" if first.low_s is None else f"{first.low_s / 60:.1f}-{first.high_s / 60:.1f} min"
        inside = "-" if first.low_s is None else ("yes" if first.low_s <= real <= first.high_s else "no")
        print(f"| {first.at_s / total:.0%} | {first.eta_s / 60:.1f} min | {span} | {real / 60:.1f} min | "
              f"{ratio:.2f} | {'yes' if abs(ratio - 1) <= TARGET else 'no'} | {inside} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
