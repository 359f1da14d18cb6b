"""How right the study's ETA was: a finished run's study.log replayed against what really happened.

Every epoch line of study.log ends with the clock's "study ETA 1h02m (40m-1h30m)" (chimuf.core.plan,
the range since it has one). The run's real remaining time at a line is the last line's timestamp
minus that line's. For each checkpoint (10 %, 25 %, 50 % of the run's wall time by default) the
first ETA said at or after it is compared with the truth: the ratio ETA / real and whether the real
time fell inside the range. Target (issue 26): after 10 % of the run, within ±25 % of the truth.

    python -m benchmarks.eta_replay RUN/study.log [--at 0.1 0.25 0.5] [--reclock]

`--reclock` also replays the log's epochs through this checkout's clock (chimuf.core.plan), so a
change to the clock is measured on a run that has already happened: the plan is rebuilt from the
plan lines the run printed (each stage's units taken alike: its epochs and seconds shared evenly),
the pools from its "N units in K worker processes" lines, and every epoch line with an ETA is fed
to the clock with its unit, epoch and seconds, at its timestamp. What the log does not say (the
re-timing of the final model and folds once the search has chosen) the replay cannot know.

A resumed run appends to the same log: replay a log of one uninterrupted run (the clock starts
again with each attempt, so the wall time between attempts is not the study's).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from chimuf.core.plan import TRAINING, Plan, StudyClock, Work, trial_unit
from chimuf.core.results import STAGES

TARGET = 0.25
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")
ETA = re.compile(r"study ETA (\S+)(?: \((\S+)-(\S+)\))?\s*$")
PART = re.compile(r"(\d+)([hms])")
# what --reclock reads: the printed plan (chimuf.core.plan.Plan.lines), stages, pools, epochs
PLAN_STAGE = re.compile(r"^  (\w+)\s+(\d+) x up to\s+\d+ epochs \((\d+)-(\d+) epochs in all, "
                        r"([\d.]+)(?:-([\d.]+))?s each(?:, (\d+) at a time)?\): about (\S+)$")
PLAN_FIXED = re.compile(r"^  and the stages that train nothing: (.*): about \S+$")
PLAN_TOTAL = re.compile(r"^  expected about (\S+) \(")
STAGE_RUNS = re.compile(r"^\[(\w+)\] running$")
POOL = re.compile(r"^  \d+ units in (\d+) worker processes")
EPOCH = re.compile(r"^  (?:(\S+) epoch (\d+)/(\d+)|epoch (\d+)/(\d+) of trial (\d+)/\d+(?: on \S+)?): ")
STOPPED = re.compile(r"^  (\S+): stopped early after epoch (\d+);")
TOOK = re.compile(r" in ((?:\d+[hms])+)\b")


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


def stamped(path: Path) -> list[tuple[float, str]]:
    """The log's timestamped lines: (seconds since its first line, the message after the stamp)."""
    lines, first = [], None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp is None:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
        first = first or when
        lines.append(((when - first).total_seconds(), line[stamp.end():]))
    if not lines:
        raise SystemExit(f"`{path}` has no timestamped lines: expected a chimuf study.log")
    return lines


def said_in(at_s: float, text: str) -> Said | None:
    eta = ETA.search(text)
    if eta is None:
        return None
    low, high = eta.group(2), eta.group(3)
    return Said(at_s, seconds(eta.group(1)), seconds(low) if low else None, seconds(high) if high else None)


def read_log(path: Path) -> tuple[list[Said], float]:
    """Every ETA the log says, with when; and the run's whole wall time (first to last line)."""
    lines = stamped(path)
    said = [s for at_s, text in lines if (s := said_in(at_s, text)) is not None]
    return said, lines[-1][0]


def plan_of(block: list[str]) -> Plan:
    """The plan a run printed, rebuilt: each stage's units alike (its printed epochs and seconds
    shared evenly; the trainings, the final model and the folds one kind), named `stage#i` until
    their own names show up in the log."""
    work, slots, fixed, trained = [], {}, {}, 0.0
    for text in block:
        if (m := PLAN_STAGE.match(text)) is not None:
            stage, n, fewest, most = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
            epoch_s = (float(m.group(5)) + float(m.group(6) or m.group(5))) / 2
            width, about = int(m.group(7) or 1), seconds(m.group(8))
            trained += about
            slots[stage] = width
            estimate = about / (math.ceil(n / width) * epoch_s) if epoch_s > 0 else fewest / n
            kind = TRAINING if stage in ("train", "final", "kfold") else ""
            work += [Work(stage, f"{stage}#{i}", min(most / n, max(fewest / n, estimate)), round(fewest / n),
                          round(most / n), epoch_s, kind) for i in range(n)]
        elif (m := PLAN_FIXED.match(text)) is not None:
            fixed = {name: seconds(took) for name, took in (part.split() for part in m.group(1).split(", "))}
        elif (m := PLAN_TOTAL.match(text)) is not None and not fixed:  # a log from before the fixed line:
            fixed = {"report": max(0.0, seconds(m.group(1)) - trained)}  # all of it at the end
    return Plan(stages=list(STAGES), work=work, fixed=fixed, slots=slots)


def reclock(lines: list[tuple[float, str]]) -> list[Said]:
    """What this checkout's clock says on the log's epochs, with when (see the module's docstring)."""
    said: list[Said] = []
    clock: StudyClock | None = None
    block: list[str] | None = None
    stage = ""
    for at_s, text in lines:
        if text.startswith("plan (times from"):
            block = []
            continue
        if block is not None:
            block.append(text)
            if PLAN_TOTAL.match(text):
                clock, block = StudyClock(plan_of(block)), None
            continue
        if (m := STAGE_RUNS.match(text)) is not None:
            stage = m.group(1)
        elif clock is None:
            continue
        elif (m := POOL.match(text)) is not None:
            clock.pooled(stage, int(m.group(1)))
        elif (m := STOPPED.match(text)) is not None:
            clock.unit_done(stage, m.group(1), int(m.group(2)))
        elif (m := EPOCH.match(text)) is not None and "study ETA" in text:
            unit = m.group(1) or trial_unit(int(m.group(6)) - 1)  # "trial 4/10" is trial_3
            epoch, most = (int(g) for g in m.groups()[1:5] if g)  # a unit's epoch/max, or a trial's
            took = TOOK.findall(text[:text.index("study ETA")])
            name(clock, stage, unit)
            epoch_s = seconds(took[-1]) if took else 0.0
            said.append(said_in(at_s, clock.eta(stage, unit)(epoch, most, epoch_s)))
            if epoch == most or "; pruned" in text:
                clock.unit_done(stage, unit)
    return [s for s in said if s is not None]


def name(clock: StudyClock, stage: str, unit: str) -> None:
    """Unit (stage, unit) takes the first placeholder of its stage the first time it shows up."""
    work = clock.plan.work
    if any((w.stage, w.name) == (stage, unit) for w in work):
        return
    free = next((i for i, w in enumerate(work) if w.stage == stage and w.name.startswith(f"{stage}#")), None)
    if free is not None:
        work[free] = replace(work[free], name=unit)


def table(said: list[Said], total: float, shares: list[float]) -> list[str]:
    """One row per checkpoint: the first ETA said at or after it against the time really left."""
    rows = ["| at | ETA said | range said | really left | ETA / real | within ±25 % | real in range |",
            "|---|---|---|---|---|---|---|"]
    for share in shares:
        first = next((s for s in said if s.at_s >= share * total), None)
        if first is None:
            rows.append(f"| {share:.0%} | (no ETA after it) | | | | | |")
            continue
        real = total - first.at_s
        ratio = first.eta_s / real if real > 0 else float("inf")
        span = "-" if first.low_s is None else f"{first.low_s / 60:.1f}-{first.high_s / 60:.1f} min"
        inside = "-" if first.low_s is None else ("yes" if first.low_s <= real <= first.high_s else "no")
        rows.append(f"| {first.at_s / total:.0%} | {first.eta_s / 60:.1f} min | {span} | "
                    f"{real / 60:.1f} min | {ratio:.2f} | {'yes' if abs(ratio - 1) <= TARGET else 'no'} | "
                    f"{inside} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eta_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="a finished run's study.log")
    parser.add_argument("--at", type=float, nargs="+", default=[0.1, 0.25, 0.5],
                        help="checkpoints, as shares of the run's wall time")
    parser.add_argument("--reclock", action="store_true",
                        help="also replay the epochs through this checkout's clock")
    args = parser.parse_args(argv)
    said, total = read_log(args.log)
    print(f"{args.log}: {len(said)} ETA lines over {total / 60:.1f} min")
    print("\n".join(table(said, total, args.at)))
    if args.reclock:
        again = reclock(stamped(args.log))
        print(f"\nthe same epochs through this checkout's clock ({len(again)} ETA lines):")
        print("\n".join(table(again, total, args.at)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
