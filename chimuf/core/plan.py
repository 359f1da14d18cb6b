"""The study's plan and its clock: how long it should take, said before it starts and as it runs.

    probe (chimuf.ml.training.probe: a few timed batches of each architecture on this machine)
      → Plan: every training, trial and fold with its expected epochs and seconds per epoch, and
        how many units of a stage run at once, printed at the start (`chimuf study --plan`)
      → StudyClock: after every epoch, the time left for the whole study, from what is left of
        the plan, corrected by what this run has shown so far

Early stopping decides the epochs, so the plan says a range: the fewest epochs the rules allow
(early stopping's first chance, pruning at its first chance) up to the maximum, and a point
estimate between them that the clock then corrects. The clock learns two things as the run goes:

1. Seconds per epoch. A unit in flight goes on at its own measured pace; a unit not started yet
   at its planned seconds times the pace of its stage's epochs so far (measured / planned), else
   of the epochs that ran as it will (in a pool or alone), else of the whole run. A pooled epoch's
   seconds are one unit's while it shared the machine, so it is set against the plan's seconds of
   that unit (never the stage's wall time): the pace learnt in a pool carries the sharing's
   slowdown, and stands for units that will run alone only until one of them has run an epoch.
2. Epochs. A finished unit says how many epochs early stopping really gave it; the units of its
   kind not finished yet (the six trainings, the final model and the early-stopped folds are one
   kind; the tuning trials another) move their estimate by the ratio real / estimated of the
   finished ones, the plan's own guess counting as one more finished unit (one surprise does not
   swing the rest), clamped to each unit's fewest..most epochs.

A stage whose units run in a pool of N workers (chimuf.ml.training.pool) takes the time of its
units scheduled N at a time, each to the first free worker (for N = 1: their sum), not their sum:
summed, a pooled stage's time left would be overstated up to N times. The range takes each unit's
fewest and most epochs instead of its estimate (the running ones from the epoch they have
reached), so it narrows as units finish: wide at the start, a point at the end. No numpy, no
TensorFlow: plain arithmetic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chimuf.core.console import format_seconds

MIN_FINISHED_FOR_MEDIAN = 2  # as chimuf.tuning.pruning: the first trials are never pruned
TRAINING = "training"  # the kind of the units early stopping ends alike: the six, the final model, folds

Span = tuple[float, float, float]  # seconds: the estimate, the fewest, the most


@dataclass(frozen=True)
class Work:
    """One unit of epochs: a training, a tuning trial, a fold."""

    stage: str
    name: str
    epochs: float  # the point estimate
    fewest: int
    most: int
    epoch_s: float  # seconds per epoch, from the probe
    kind: str = ""  # units whose epochs one rule decides alike learn from each other; "": its stage

    @property
    def seconds(self) -> float:
        return self.epochs * self.epoch_s

    @property
    def family(self) -> str:
        return self.kind or self.stage


@dataclass
class Plan:
    stages: list[str]  # in the order they run
    work: list[Work]
    fixed: dict[str, float] = field(default_factory=dict)  # seconds of the stages that train nothing
    notes: list[str] = field(default_factory=list)  # how each estimate was made
    slots: dict[str, int] = field(default_factory=dict)  # units of a stage run at once (absent: 1)

    def total_s(self) -> float:
        return sum(self.fixed.values()) + sum(self.stage_span(stage)[0] for stage in self.trained())

    def range_s(self) -> tuple[float, float]:
        fixed = sum(self.fixed.values())
        spans = [self.stage_span(stage) for stage in self.trained()]
        return fixed + sum(s[1] for s in spans), fixed + sum(s[2] for s in spans)

    def trained(self) -> list[str]:
        """The stages that have units, in the order they come in the plan."""
        return list(dict.fromkeys(w.stage for w in self.work))

    def stage_span(self, stage: str) -> Span:
        units = [w for w in self.work if w.stage == stage]
        return schedule([], [(w.seconds, w.fewest * w.epoch_s, w.most * w.epoch_s) for w in units],
                        self.slots.get(stage, 1))

    def fixed_after(self, stage: str) -> float:
        """Seconds of the stages that train nothing and come after `stage`."""
        later = self.stages[self.stages.index(stage) + 1:] if stage in self.stages else []
        return sum(self.fixed.get(name, 0.0) for name in later)

    def lines(self) -> list[str]:
        """The plan as printed: per stage, its units, epochs and time; then the total."""
        out = ["plan (times from a probe of each architecture on this machine):"]
        for stage in self.trained():
            units = [w for w in self.work if w.stage == stage]
            fewest, most = sum(w.fewest for w in units), sum(w.most for w in units)
            per = sorted({round(w.epoch_s, 1) for w in units})
            pace = f"{per[0]:g}s" if len(per) == 1 else f"{per[0]:g}-{per[-1]:g}s"
            slots = self.slots.get(stage, 1)
            at_once = f", {slots} at a time" if slots > 1 and len(units) > 1 else ""
            out.append(f"  {stage:<8} {len(units):>2} x up to {max(w.most for w in units):>3} epochs "
                       f"({fewest}-{most} epochs in all, {pace} each{at_once}): about "
                       f"{format_seconds(self.stage_span(stage)[0])}")
        if self.fixed:
            parts = ", ".join(f"{stage} {format_seconds(seconds)}" for stage, seconds in self.fixed.items())
            out.append(f"  and the stages that train nothing: {parts}: about "
                       f"{format_seconds(sum(self.fixed.values()))}")
        low, high = self.range_s()
        out.append(f"  expected about {format_seconds(self.total_s())} (between {format_seconds(low)} and "
                   f"{format_seconds(high)}, as early stopping and pruning decide)")
        return out + [f"  {note}" for note in self.notes]


def schedule(running: Iterable[Span], waiting: Iterable[Span], slots: int) -> Span:
    """Seconds until a stage's last unit ends: the units in flight go on, each waiting unit (in
    order) goes to the first worker free; once with the estimates, the fewest and the most epochs.
    With one worker: the sum of it all."""
    running, waiting = list(running), list(waiting)
    width = max(1, slots, len(running))
    ends = []
    for part in range(3):
        free = sorted([r[part] for r in running] + [0.0] * (width - len(running)))
        for unit in waiting:
            heapq.heappush(free, heapq.heappop(free) + unit[part])
        ends.append(max(free))
    left, low, high = ends
    return left, min(low, left), max(high, left)  # a schedule can shift units; the range holds the estimate


@dataclass
class Running:
    """A unit in flight as the clock has seen it."""

    unit: Work | None  # None: a unit the plan does not know (it counts only its own epochs)
    max_epochs: int
    epoch: int = 0  # the last epoch it reported
    seconds: float = 0.0  # measured, over the epochs it reported
    epochs_seen: int = 0

    def epoch_s(self) -> float:
        return self.seconds / self.epochs_seen if self.epochs_seen else 0.0


@dataclass
class Pace:
    """Measured against planned epoch seconds, summed per key (a stage; "pooled" or "alone"; "all")."""

    measured: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)

    def add(self, keys: Iterable[str], measured_s: float, planned_s: float) -> None:
        for key in keys:
            self.measured[key] = self.measured.get(key, 0.0) + measured_s
            self.planned[key] = self.planned.get(key, 0.0) + planned_s

    def of(self, *keys: str) -> float:
        """The ratio of the first key that has epochs; 1 (the plan) when none has."""
        for key in keys:
            if self.planned.get(key, 0.0) > 0:
                return self.measured[key] / self.planned[key]
        return 1.0


class StudyClock:
    """The time left for the study, after every epoch, with the range it can still fall in (the
    module's docstring has the model)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.slots: dict[str, int] = dict(plan.slots)  # as the pools really run them (pooled())
        self.started: set[tuple[str, str]] = set()
        self.running: dict[tuple[str, str], Running] = {}
        self.ran: dict[tuple[str, str], int] = {}  # finished units of the plan: epochs really run
        self.pace = Pace()

    def pooled(self, stage: str, slots: int) -> None:
        """`stage`'s units run `slots` at a time (said by the pool before it starts them)."""
        self.slots[stage] = max(1, slots)

    def unit_done(self, stage: str, name: str, epochs_run: int | None = None, learn: bool = True) -> None:
        """Unit (stage, name) has ended after `epochs_run` epochs (None: the last one it reported):
        no longer waited for, and, if it `learn`s (it ended as its rule decided: not failed, not
        reused from before), a lesson on how many epochs the units of its kind run."""
        key = (stage, name)
        self.started.add(key)
        seen = self.running.pop(key, None)
        epochs = epochs_run if epochs_run is not None else (seen.epoch if seen is not None else None)
        if learn and epochs is not None and self.unit(stage, name) is not None:
            self.ran[key] = epochs

    def unit(self, stage: str, name: str) -> Work | None:
        return next((w for w in self.plan.work if (w.stage, w.name) == (stage, name)), None)

    def eta(self, stage: str, name: str) -> Callable[[int, int, float], str]:
        """For unit (stage, name): a function of (epoch, max_epochs, that epoch's seconds) that
        says the time left for the whole study and its range."""

        def after_epoch(epoch: int, max_epochs: int, epoch_s: float) -> str:
            self.record(stage, name, epoch, max_epochs, epoch_s)
            left, low, high = self.left(stage)
            return (f"study ETA {format_seconds(left)} "
                    f"({format_seconds(low)}-{format_seconds(high)})")

        return after_epoch

    def record(self, stage: str, name: str, epoch: int, max_epochs: int, epoch_s: float) -> None:
        key = (stage, name)
        if key not in self.running:
            # A unit starts: where units run one at a time, the one before it has ended (its
            # last epoch was its last); a pool says so itself (unit_done), its units overlap.
            for other in list(self.running):
                if other[0] != stage or self.slots.get(stage, 1) <= 1:
                    self.unit_done(*other)
            self.started.add(key)
            self.running[key] = Running(self.unit(stage, name), max_epochs)
        run = self.running[key]
        run.epoch, run.max_epochs = epoch, max_epochs
        run.seconds += epoch_s
        run.epochs_seen += 1
        if run.unit is not None:
            self.pace.add(self.pace_keys(stage), epoch_s, run.unit.epoch_s)

    def pace_keys(self, stage: str) -> tuple[str, str, str]:
        return stage, "pooled" if self.slots.get(stage, 1) > 1 else "alone", "all"

    def epochs(self, unit: Work) -> float:
        """`unit`'s estimate of epochs, moved by what the finished units of its kind really ran."""
        finished = [(w.epochs, self.ran[(w.stage, w.name)]) for w in self.plan.work
                    if w.family == unit.family and (w.stage, w.name) in self.ran]
        if not finished:
            return unit.epochs
        prior = sum(e for e, _ in finished) / len(finished)  # the plan's guess, as one more unit
        ratio = (sum(r for _, r in finished) + prior) / (sum(e for e, _ in finished) + prior)
        return min(float(unit.most), max(float(unit.fewest), unit.epochs * ratio))

    def in_flight(self, run: Running) -> Span:
        """Seconds left of a running unit at its own pace: to its estimate (at least one more epoch
        until its last), to its fewest (none when it may stop after this one), to its most."""
        expected = self.epochs(run.unit) if run.unit is not None else run.max_epochs
        fewest = run.unit.fewest if run.unit is not None else run.max_epochs
        to_estimate = min(run.max_epochs, max(expected, run.epoch + 1)) - run.epoch
        to_fewest = max(0, min(run.max_epochs, fewest) - run.epoch)
        pace = run.epoch_s()
        return to_estimate * pace, to_fewest * pace, max(0, run.max_epochs - run.epoch) * pace

    def waiting(self, unit: Work) -> Span:
        """Seconds of a unit not started: its epochs at its planned pace times this run's."""
        pace = unit.epoch_s * self.pace.of(*self.pace_keys(unit.stage))
        return self.epochs(unit) * pace, unit.fewest * pace, unit.most * pace

    def left(self, stage: str) -> Span:
        """Seconds left of the study seen from `stage`: its units and those of the stages after it,
        each stage's scheduled on its workers, then the stages that train nothing. Units of the
        stages before it that never started will not (reused, or a search that ended early)."""
        order = self.plan.stages
        since = order.index(stage) if stage in order else 0
        total = [self.plan.fixed_after(stage)] * 3
        stages = dict.fromkeys([stage, *(w.stage for w in self.plan.work)])
        for name in stages:
            if name in order and order.index(name) < since:
                continue
            running = [self.in_flight(r) for (s, _), r in self.running.items() if s == name]
            waiting = [self.waiting(w) for w in self.plan.work
                       if w.stage == name and (w.stage, w.name) not in self.started]
            span = schedule(running, waiting, self.slots.get(name, 1))
            total = [t + s for t, s in zip(total, span, strict=True)]
        return total[0], total[1], total[2]


def trial_unit(trial_id: str | int) -> str:
    """A tuning trial's name to the plan and the clock: Keras Tuner's ids are zero-padded to the
    budget's digits ("03" of 10 trials) where the plan counts from 0; both are `trial_3`."""
    return f"trial_{int(trial_id)}"


def training_epochs(max_epochs: int, start_from_epoch: int, patience: int) -> tuple[float, int, int]:
    """(estimate, fewest, most) epochs of a training with early stopping: it cannot stop before
    epoch start_from_epoch + 1 + patience; the estimate adds half a patience (the paper run's
    trainings ran 21-28 epochs with 15 and 5)."""
    fewest = min(max_epochs, start_from_epoch + 1 + patience)
    return min(float(max_epochs), fewest + patience / 2), fewest, max_epochs


def trial_epochs(index: int, max_epochs: int, start_from_epoch: int, patience: int,
                 prune_after: int | None) -> tuple[float, int, int]:
    """(estimate, fewest, most) epochs of trial `index` (0-based): the first trials are never
    pruned; a later one stops at the rule's first chance or, half the time, runs on like a
    training (the median splits the trials in two)."""
    estimate, fewest, most = training_epochs(max_epochs, start_from_epoch, patience)
    if prune_after is None or index < MIN_FINISHED_FOR_MEDIAN:
        return estimate, fewest, most
    first_chance = min(max_epochs, prune_after + 1)
    return (estimate + first_chance) / 2, first_chance, most
