"""The study's plan and its clock: how long it should take, said before it starts and as it runs.

    probe (chimuf.ml.training.probe: a few timed batches of each architecture on this machine)
      → Plan: every training, trial and fold with its expected epochs and seconds per epoch,
        printed at the start (`chimuf study --plan` prints only that)
      → StudyClock: after every epoch, the time left for the whole study, from what is left of
        the plan, corrected by how fast this run's epochs have really been

Early stopping decides the epochs, so the plan says a range: the fewest epochs the rules allow
(early stopping's first chance, pruning at its first chance) up to the maximum, and a point
estimate between them that the clock then corrects. No numpy, no TensorFlow: plain arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from chimuf.core.console import format_seconds

MIN_FINISHED_FOR_MEDIAN = 2  # as chimuf.tuning.pruning: the first trials are never pruned


@dataclass(frozen=True)
class Work:
    """One unit of epochs: a training, a tuning trial, a fold."""

    stage: str
    name: str
    epochs: float  # the point estimate
    fewest: int
    most: int
    epoch_s: float  # seconds per epoch, from the probe

    @property
    def seconds(self) -> float:
        return self.epochs * self.epoch_s


@dataclass
class Plan:
    stages: list[str]  # in the order they run
    work: list[Work]
    fixed: dict[str, float] = field(default_factory=dict)  # seconds of the stages that train nothing
    notes: list[str] = field(default_factory=list)  # how each estimate was made

    def total_s(self) -> float:
        return sum(self.fixed.values()) + sum(w.seconds for w in self.work)

    def range_s(self) -> tuple[float, float]:
        fixed = sum(self.fixed.values())
        return (fixed + sum(w.fewest * w.epoch_s for w in self.work),
                fixed + sum(w.most * w.epoch_s for w in self.work))

    def fixed_after(self, stage: str) -> float:
        """Seconds of the stages that train nothing and come after `stage`."""
        later = self.stages[self.stages.index(stage) + 1:] if stage in self.stages else []
        return sum(self.fixed.get(name, 0.0) for name in later)

    def lines(self) -> list[str]:
        """The plan as printed: per stage, its units, epochs and time; then the total."""
        out = ["plan (times from a probe of each architecture on this machine):"]
        for stage in dict.fromkeys(w.stage for w in self.work):
            units = [w for w in self.work if w.stage == stage]
            seconds = sum(w.seconds for w in units)
            fewest, most = sum(w.fewest for w in units), sum(w.most for w in units)
            per = sorted({round(w.epoch_s, 1) for w in units})
            pace = f"{per[0]:g}s" if len(per) == 1 else f"{per[0]:g}-{per[-1]:g}s"
            out.append(f"  {stage:<8} {len(units):>2} x up to {max(w.most for w in units):>3} epochs "
                       f"({fewest}-{most} epochs in all, {pace} each): about {format_seconds(seconds)}")
        low, high = self.range_s()
        out.append(f"  expected about {format_seconds(self.total_s())} (between {format_seconds(low)} and "
                   f"{format_seconds(high)}, as early stopping and pruning decide)")
        return out + [f"  {note}" for note in self.notes]


class StudyClock:
    """The time left for the study, after every epoch, with the range it can still fall in.

    Left = the epochs left of the running unit at its own measured pace, plus every unit not yet
    started at its planned pace times how fast this run has been against the plan so far. The
    range takes each unit's fewest and most epochs instead of its estimate (the running one from
    the epoch it has reached), so it narrows as units finish: wide at the start, where early
    stopping can still decide most of the run, a point at the end.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.done: set[tuple[str, str]] = set()
        self.measured_s = 0.0  # seconds of the epochs run so far
        self.planned_s = 0.0  # what the plan expected for those epochs

    def eta(self, stage: str, name: str) -> Callable[[int, int, float], str]:
        """For unit (stage, name): a function of (epoch, max_epochs, that epoch's seconds) that
        says the time left for the whole study and its range."""
        unit = next((w for w in self.plan.work if (w.stage, w.name) == (stage, name)), None)

        def after_epoch(epoch: int, max_epochs: int, epoch_s: float) -> str:
            if unit is not None:
                self.measured_s += epoch_s
                self.planned_s += unit.epoch_s
            pace = self.measured_s / self.planned_s if self.planned_s > 0 else 1.0
            expected = unit.epochs if unit is not None else max_epochs
            fewest = unit.fewest if unit is not None else max_epochs
            # 1. The running unit: from this epoch to its estimate, its fewest, its most epochs.
            here = [max(0.0, min(max_epochs, max(e, epoch + 1)) - epoch) * epoch_s
                    for e in (expected, fewest, max_epochs)]
            if fewest <= epoch:  # it may stop after this very epoch
                here[1] = 0.0
            # 2. The units not started yet, at this run's pace; the stages that train nothing.
            self.done.add((stage, name))
            later = [w for w in self.plan.work if (w.stage, w.name) not in self.done]
            fixed = self.plan.fixed_after(stage)
            rest = (sum(w.epochs * w.epoch_s for w in later), sum(w.fewest * w.epoch_s for w in later),
                    sum(w.most * w.epoch_s for w in later))  # planned seconds: estimate, fewest, most
            left, low, high = (h + pace * r + fixed for h, r in zip(here, rest, strict=True))
            return (f"study ETA {format_seconds(left)} "
                    f"({format_seconds(low)}-{format_seconds(high)})")

        return after_epoch


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
