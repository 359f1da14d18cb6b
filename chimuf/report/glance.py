"""The report's first page: the run at a glance.

Status, the headline numbers with their intervals beside the paper's, the verdicts on chance and
on the paper, the k-fold estimate, the suspect labels and the time the stages took: what a reader
needs before deciding to read on. The rows only arrange stored facts (the verdicts are the
evaluation's, chimuf.stats.evidence); the page is the report's abstract, so pandoc and Quarto set it
under the title, before the table of contents.
"""

from __future__ import annotations

import math

from chimuf.core.headline import headline_numbers, number_of
from chimuf.core.paper import PAPER, same_data
from chimuf.core.results import Results
from chimuf.report.blocks import count, num, seconds, strong, with_interval
from chimuf.report.claims import fmt, p_text
from chimuf.report.escape import Trusted, markdown_text
from chimuf.report.views import OTHER_DATA, class_names, missing_stages


def status_text(r: Results) -> str:
    missing = missing_stages(r)
    state = r.run.status + (f", not run yet: {', '.join(missing)}" if missing else "")
    return f"Run {r.run.run_id} (profile {r.run.profile}, seed {r.run.seed}): {state}"


def stage_time(r: Results) -> float:
    """Seconds spent in the stages recorded so far (each summed over its attempts)."""
    return math.fsum(f.wall_s for f in r.run.stages)


def glance_rows(r: Results) -> list[list[object]]:
    """Quantity, this run, the paper: the headline numbers and the verdicts behind them."""
    paper = same_data(class_names(r))

    def of_paper(value: str) -> str:
        return value if paper else OTHER_DATA

    e, k, labels = r.evaluate, r.kfold, r.labels
    numbers = headline_numbers(r)  # the one list of headline numbers (chimuf.core.headline)
    rows: list[list[object]] = [["Test images", count(e.n_images if e else None),
                                 of_paper(PAPER.test_images)]]
    for key, words, theirs in (("test_accuracy", "Test accuracy", PAPER.accuracy),
                               ("test_roc_auc", "ROC AUC", PAPER.roc_auc)):
        n = number_of(numbers, key)
        rows.append([words, with_interval(n.value, n.interval) if n else num(None), of_paper(theirs)])
    if e is not None and e.chance is not None:
        c = e.chance
        verdict = c.verdict
        detail = markdown_text(f"({fmt(c.majority_rate)} alone; {p_text(c.p_value)})")
        rows.append(["Against always answering " + c.majority_label,
                     Trusted(f"{strong(verdict)} {detail}"), ""])
    for key, words in (("test_balanced_accuracy", "Balanced accuracy"),
                       ("test_average_precision", "Average precision"), ("test_brier_score", "Brier score")):
        n = number_of(numbers, key)
        if n is not None and n.value is not None:  # measured (runs of chimuf 0.2 on)
            rows.append([words, with_interval(n.value, n.interval), ""])
    for c in (e.compared("paper") if e else []):
        side = "higher" if c.difference > 0 else "lower"
        rows.append(["Against the paper's accuracy",
                     strong(f"{side}, {c.verdict}") if c.distinguishable else Trusted(c.verdict), ""])
    folds = number_of(numbers, "kfold_mean_accuracy")
    if k is not None and folds is not None:
        rows.append([f"{len(k.folds)}-fold accuracy, mean ± sd",
                     Trusted(f"{num(folds.value)} ± {num(folds.sd)}"), ""])
    if labels is not None:
        rows.append(["Suspect labels", Trusted(f"{count(len(labels.suspects))} of {count(labels.n_checked)}"),
                     ""])
    rows.append(["Time in stages", seconds(stage_time(r)), ""])
    return rows
