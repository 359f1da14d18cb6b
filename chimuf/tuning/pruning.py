"""The median stopping rule: a tuning trial that is clearly losing stops before its last epoch.

    after epoch e > grace: stop the trial if its best validation accuracy so far is below the
    median of the completed trials' best validation accuracy up to the same epoch e
    (only trials that ran at least e epochs count, and at least MIN_COMPLETED of them)

This is the rule of Google Vizier (Golovin et al., 2017) with best-so-far in place of the running
average. It looks only at finished trials, which a local search runs one after another in a fixed
order, so a resumed search prunes exactly as an unbroken one; in a distributed search which trials
have finished depends on timing. What pruning saves goes where it pays: the surviving trials run
to the trainings' budget (`tune.epochs`), so the search ranks architectures by how well they end,
not by how fast they start.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from chimuf.core.results import EpochRecord

MIN_COMPLETED = 2  # finished trials needed at an epoch before the median means anything


@dataclass(frozen=True)
class MedianStopping:
    grace_epochs: int  # never stop a trial in its first `grace_epochs` epochs

    def should_stop(self, history: Sequence[EpochRecord], completed: Sequence[Sequence[EpochRecord]]) -> bool:
        """True when the trial with `history` should stop now, given the completed trials' histories."""
        epoch = len(history)
        if epoch <= self.grace_epochs:
            return False
        others = [best_so_far(h, epoch) for h in completed if len(h) >= epoch]
        if len(others) < MIN_COMPLETED:
            return False
        return best_so_far(history, epoch) < statistics.median(others)


def best_so_far(history: Sequence[EpochRecord], epoch: int) -> float:
    """The best validation accuracy of the first `epoch` epochs (NaN epochs do not count)."""
    values = [r.val_accuracy for r in history[:epoch] if r.val_accuracy == r.val_accuracy]
    return max(values, default=float("-inf"))


def epochs_saved(runs: Sequence[int], max_epochs: int, earliest_stop: int) -> tuple[int, int]:
    """(fewest, most) epochs the pruned trials, which ran `runs` epochs, would have run more:
    at least up to the earliest epoch early stopping could stop them, at most to `max_epochs`."""
    low = sum(max(0, min(earliest_stop, max_epochs) - run) for run in runs)
    high = sum(max(0, max_epochs - run) for run in runs)
    return low, high
