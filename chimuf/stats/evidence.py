"""Which differences the data can tell apart: every comparison the report and the console make.

A study on a few hundred images can produce a table of six validation accuracies from 0.50 to
0.79 in which nothing differs beyond noise. Words like "best", "improved" or "helped" are only
earned when the images behind two numbers tell them apart, so each comparison is computed here,
once, with its evidence, and stored in the evaluation's outcome for the report and the console:

* test accuracy against chance: the majority-class rate of the same images and an exact
  one-sided binomial test (`chance_test`);
* two models on the test split: McNemar's test on the images exactly one of them gets right
  (paired; chimuf.stats.metrics.mcnemar_test);
* two accuracies on the validation split, and this run's test accuracy against the paper's:
  Newcombe's interval of the difference of two proportions (chimuf.core.proportions), and the
  p value it implies. For two models on one validation split it ignores the pairing, so it is
  conservative there.

Every verdict is decided here and only here, at alpha = 1 − `evaluate.confidence`, and stored
with its confidence in the outcome: the console, the report and `chimuf compare` print the
stored words (`ChanceTest.verdict`, `Comparison.verdict`) and never decide again. Several
comparisons asked together (a *family*: one topic on one split, e.g. the best of the six
against each of the five others, or the beyond rows against the final model) are judged on
Holm-adjusted p values, so the family's chance of any false "distinguishable" stays at alpha.

The topics are the report's claims: the best of the six trainings against each other one,
each architecture with against without augmentation, the final model against model 3 with
augmentation (the model it is tuned from), and this run against the paper.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from chimuf.core.paper import PAPER, same_data
from chimuf.core.proportions import alpha_of, holm, newcombe_difference, newcombe_p_value
from chimuf.core.results import ChanceTest, Comparison, McNemarTest, TrainingOutcome

NEWCOMBE = "Newcombe hybrid score interval of the difference"


# --- against chance ----------------------------------------------------------------------------


def chance_test(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                alpha: float) -> ChanceTest:
    """Is the accuracy of `predicted` above what always answering the majority class scores?

    The majority rate is the share of the most frequent class among these very images; the test
    is exact: P(X ≥ correct) for X ~ Bin(n, majority rate).
    """
    from scipy.stats import binomtest

    alpha = round(alpha, 10)  # 1 − 0.95 is 0.050000000000000044 in floating point
    if len(labels) == 0:
        return ChanceTest(n=0, correct=0, accuracy=float("nan"), majority_label=classes[0],
                          majority_rate=float("nan"), p_value=1.0, alpha=alpha,
                          better_than_chance=False)
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    correct = int(np.sum(y == np.asarray(predicted, dtype=np.int64)))
    counts = np.bincount(y, minlength=len(classes))  # (classes,)
    majority = int(np.argmax(counts))  # the first of equals
    rate = float(counts[majority] / n) if n else float("nan")
    p_value = float(binomtest(correct, n, rate, alternative="greater").pvalue) if n else 1.0
    return ChanceTest(n=n, correct=correct, accuracy=correct / n if n else float("nan"),
                      majority_label=classes[majority], majority_rate=rate, p_value=p_value,
                      alpha=alpha, better_than_chance=p_value < alpha)


# --- two accuracies ----------------------------------------------------------------------------


def by_interval(topic: str, split: str, a: tuple[str, float, int], b: tuple[str, float, int],
                confidence: float) -> Comparison:
    """Two accuracies (name, accuracy, images) judged by Newcombe's interval of their difference."""
    (name_a, acc_a, n_a), (name_b, acc_b, n_b) = a, b
    k_a, k_b = round(acc_a * n_a), round(acc_b * n_b)
    interval = newcombe_difference(k_a, n_a, k_b, n_b, confidence)
    p_value = newcombe_p_value(k_a, n_a, k_b, n_b)
    return Comparison(topic=topic, split=split, model_a=name_a, model_b=name_b, accuracy_a=acc_a,
                      accuracy_b=acc_b, n_a=n_a, n_b=n_b, difference=acc_a - acc_b, interval=interval,
                      p_value=p_value, method=NEWCOMBE, distinguishable=p_value < alpha_of(confidence),
                      confidence=confidence, p_adjusted=p_value)


def by_mcnemar(topic: str, test: McNemarTest, accuracy_a: float, accuracy_b: float, n: int,
               confidence: float) -> Comparison:
    """Two models on the same test images, judged by McNemar's test."""
    return Comparison(topic=topic, split="test", model_a=test.model_a, model_b=test.model_b,
                      accuracy_a=accuracy_a, accuracy_b=accuracy_b, n_a=n, n_b=n,
                      difference=accuracy_a - accuracy_b, interval=None, p_value=test.p_value,
                      method=f"McNemar, {test.method}" if test.method else "McNemar",
                      distinguishable=test.p_value < alpha_of(confidence), confidence=confidence,
                      p_adjusted=test.p_value)


def adjusted(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with Holm's adjustment applied within each family (topic and split), and
    each verdict decided on the adjusted p value; the order is kept."""
    families: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(comparisons):
        families.setdefault((c.topic, c.split), []).append(i)
    out = list(comparisons)
    for members in families.values():
        p_values = [1.0 if comparisons[i].p_value is None else comparisons[i].p_value for i in members]
        for i, p in zip(members, holm(p_values), strict=True):
            c = comparisons[i]
            out[i] = dataclasses.replace(c, p_adjusted=p, family_size=len(members),
                                         distinguishable=p < alpha_of(c.confidence))
    return out


# --- the report's claims -----------------------------------------------------------------------


def validation_comparisons(trainings: Sequence[TrainingOutcome], best: TrainingOutcome | None,
                           final: TrainingOutcome, n_validation: int,
                           confidence: float) -> list[Comparison]:
    """On the validation split: the best of the six against each other one, each architecture
    with against without augmentation, the final model against model3_aug."""
    def entry(t: TrainingOutcome) -> tuple[str, float, int]:
        return (t.name, t.best_val_accuracy, n_validation)

    scored = [t for t in trainings if t.best_val_accuracy == t.best_val_accuracy]  # not NaN
    out = []
    if best is not None:
        out += [by_interval("best_training", "validation", entry(best), entry(t), confidence)
                for t in scored if t.name != best.name]
    by_key = {(t.architecture, t.augmented): t for t in scored}
    for architecture in sorted({a for a, _ in by_key}):
        if (architecture, True) in by_key and (architecture, False) in by_key:
            out.append(by_interval("augmentation", "validation", entry(by_key[(architecture, True)]),
                                   entry(by_key[(architecture, False)]), confidence))
    if ("model3", True) in by_key and final.best_val_accuracy == final.best_val_accuracy:
        out.append(by_interval("final_vs_model3_aug", "validation", entry(final),
                               entry(by_key[("model3", True)]), confidence))
    return out


def mcnemar_comparisons(tests: Sequence[McNemarTest], accuracies: dict[str, float], n_test: int,
                     final_name: str, confidence: float) -> list[Comparison]:
    """The McNemar tests of the evaluation as comparisons: final vs model3_aug, and each
    architecture with vs without augmentation."""
    return [by_mcnemar("final_vs_model3_aug" if t.model_a == final_name else "augmentation", t,
                       accuracies[t.model_a], accuracies[t.model_b], n_test, confidence)
            for t in tests]


def paper_comparison(accuracy: float, n_test: int, classes: Sequence[str],
                     confidence: float) -> list[Comparison]:
    """This run's test accuracy against the paper's (0.94 on 1 184 images), on the paper's data
    only: two independent test sets, Newcombe's interval of the difference."""
    if not same_data(classes) or n_test == 0:
        return []
    return [by_interval("paper", "test", ("this run", accuracy, n_test),
                        ("paper", float(PAPER.accuracy), PAPER.n_test), confidence)]


def every_comparison(trainings: Sequence[TrainingOutcome], best: TrainingOutcome | None,
                     final: TrainingOutcome, n_validation: int, tests: Sequence[McNemarTest],
                     test_accuracies: dict[str, float], n_test: int, classes: Sequence[str],
                     confidence: float) -> list[Comparison]:
    """Every comparison of the report, each with its evidence and its Holm-adjusted verdict: on
    validation (the six trainings, the final model), on the test split (McNemar), and against
    the paper."""
    return adjusted([
        *validation_comparisons(trainings, best, final, n_validation, confidence),
        *mcnemar_comparisons(tests, test_accuracies, n_test, final.name, confidence),
        *paper_comparison(test_accuracies[final.name], n_test, classes, confidence),
    ])


# --- beyond the paper --------------------------------------------------------------------------


def beyond_comparisons(tests: Sequence[McNemarTest], accuracies: dict[str, float], n_test: int,
                       confidence: float) -> list[Comparison]:
    """Each beyond row against the final model (McNemar on the test split), one family: the
    report reads the rows together, so "better than the final model" is Holm-adjusted over them."""
    return adjusted([by_mcnemar("beyond", t, accuracies[t.model_a], accuracies[t.model_b], n_test,
                                confidence) for t in tests])
