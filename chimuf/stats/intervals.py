"""How far each number of a test split could move with another sample of the same size.

An interval should mean what it says: a 95 % interval should hold the true value 95 times in a
hundred, also at the edges, where a percentile bootstrap collapses (30 right out of 30 gives the
percentile interval [1.000, 1.000], as if 30 images proved perfection). So:

* proportions (accuracy, and per class precision and recall) get Wilson's score interval from
  their counts (chimuf.core.proportions): closed form, inside [0, 1], honest at 0 and 1;
* statistics that are not a proportion (ROC AUC, per-class F1, average precision, balanced
  accuracy, the Brier score) get the BCa bootstrap (bias-corrected and accelerated, Efron 1987;
  scipy.stats.bootstrap), which corrects the percentile interval for bias and skew. Images are
  resampled in pairs (label, probability), seeded, so a rerun gives the same interval.

Where BCa is undefined the fallback is explicit and recorded in `Interval.method`:

* a statistic that needs both classes (AUC, average precision) on a sample of one class has no
  value and no interval: NaN, "undefined: one class only";
* fewer than two images: no bootstrap at all, "undefined: fewer than two images";
* every resample giving the same value (e.g. all images right): F1 and balanced accuracy are
  bounded by their ingredients' Wilson intervals (F1 grows with precision and with recall,
  balanced accuracy is the mean of the two recalls), which is conservative; AUC and average
  precision (perfect separation) get the Wilson interval of their value over m = min(positives,
  negatives) images, as if measured on m disjoint (positive, negative) pairs; the Brier score
  falls back to the percentile interval, marked as such;
* a few resamples without one of the classes (AUC undefined there): BCa cannot use them, so
  the percentile interval over the defined resamples is given, marked as such.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chimuf.core.proportions import wilson_interval
from chimuf.core.results import DEFAULT_THRESHOLD, Interval
from chimuf.stats import metrics

WILSON = "Wilson"
BCA = "BCa bootstrap"
PERCENTILE = "percentile bootstrap"
ONE_CLASS = "undefined: one class only"
TOO_FEW = "undefined: fewer than two images"
BATCH = 250  # resamples per vectorised batch: bounds memory to BATCH × n values

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (m, n) labels, probabilities → (m,)


@dataclass
class Intervals:
    """Every interval of one classifier on one split, each with its method."""

    accuracy: Interval
    precision: list[Interval]  # one per class, in `classes` order
    recall: list[Interval]
    f1: list[Interval]
    balanced_accuracy: Interval
    roc_auc: Interval
    average_precision: Interval
    brier: Interval
    samples: int
    confidence: float


def wilson(k: int, n: int, confidence: float) -> Interval:
    """Wilson's interval of k out of n, marked with its method."""
    interval = wilson_interval(k, n, confidence)
    return Interval(interval.low, interval.high, WILSON)


def metric_intervals(labels: np.ndarray, probabilities: np.ndarray, *,
                     threshold: float = DEFAULT_THRESHOLD, samples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> Intervals:
    """Wilson intervals of the proportions, BCa intervals of the rest (see the module's text)."""
    y, p = metrics.check_predictions(labels, probabilities)
    predicted = metrics.predict_labels(p, threshold)
    cm = metrics.confusion_matrix(y, predicted)  # (2, 2), rows true, columns predicted
    precision = [wilson(int(cm[k, k]), int(cm[:, k].sum()), confidence) for k in (0, 1)]
    recall = [wilson(int(cm[k, k]), int(cm[k, :].sum()), confidence) for k in (0, 1)]

    def boot(statistic: Statistic, fallback: Interval | None = None) -> Interval:
        return bca(y, p, statistic, samples=samples, confidence=confidence, seed=seed, fallback=fallback)

    f1 = [boot(f1_statistic(k, threshold), f1_bounds(precision[k], recall[k])) for k in (0, 1)]
    return Intervals(
        accuracy=wilson(int(np.trace(cm)), len(y), confidence),
        precision=precision, recall=recall, f1=f1,
        balanced_accuracy=boot(balanced_statistic(threshold), mean_bounds(recall)),
        roc_auc=boot(metrics.rank_auc, pairs_bounds(y, metrics.roc_auc(y, p), confidence)),
        average_precision=boot(metrics.average_precision_rows,
                               pairs_bounds(y, metrics.average_precision(y, p), confidence)),
        brier=boot(metrics.brier_rows),
        samples=samples, confidence=confidence,
    )


# --- the bootstrap -----------------------------------------------------------------------------


def bca(labels: np.ndarray, probabilities: np.ndarray, statistic: Statistic, *, samples: int,
        confidence: float, seed: int, fallback: Interval | None = None) -> Interval:
    """The BCa interval of `statistic` over images resampled in pairs, or the stated fallback."""
    from scipy.stats import bootstrap

    y = labels.astype(np.int64)
    if len(y) < 2:
        return Interval(float("nan"), float("nan"), TOO_FEW)
    point = statistic(y[np.newaxis, :], probabilities[np.newaxis, :])[0]
    if np.isnan(point):
        return Interval(float("nan"), float("nan"), ONE_CLASS)

    def vectorised(yb: np.ndarray, pb: np.ndarray, axis: int = -1) -> np.ndarray:
        shape = yb.shape[:-1]  # scipy passes (..., n): resamples or jackknife rows
        rows = statistic(yb.reshape(-1, yb.shape[-1]).astype(np.int64), pb.reshape(-1, pb.shape[-1]))
        return rows.reshape(shape)

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # degenerate or NaN distributions: handled below
        result = bootstrap((y, probabilities), vectorised, n_resamples=samples, batch=BATCH,
                           vectorized=True, paired=True, confidence_level=confidence, method="BCa",
                           rng=np.random.default_rng(seed))
    values = result.bootstrap_distribution  # (samples,)
    defined = values[~np.isnan(values)]
    if len(defined) and np.ptp(defined) <= 1e-12 * max(1.0, float(np.abs(defined).max())):
        return fallback or percentile(defined, confidence, f"{PERCENTILE} (BCa undefined: every "
                                                           "resample gives the same value)")
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if np.isnan(low) or np.isnan(high):
        return percentile(defined, confidence, f"{PERCENTILE} (BCa undefined: some resamples hold "
                                               "one class only)")
    return Interval(low, high, BCA)


def percentile(values: np.ndarray, confidence: float, method: str) -> Interval:
    if len(values) == 0:
        return Interval(float("nan"), float("nan"), ONE_CLASS)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high), method)


# --- statistics of (m, n) label and probability matrices, one value per row -------------------


def f1_statistic(k: int, threshold: float) -> Statistic:
    def f1(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        predicted = p > threshold
        return metrics.f1_rows(y == k, predicted if k == 1 else ~predicted)
    return f1


def balanced_statistic(threshold: float) -> Statistic:
    def balanced(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        return metrics.balanced_accuracy_rows(y, (p > threshold).astype(np.int64))
    return balanced


# --- fallbacks when every resample agrees ------------------------------------------------------


def f1_bounds(precision: Interval, recall: Interval) -> Interval:
    """F1 at the low ends and at the high ends of precision and recall: F1 grows with both."""
    low, high = (metrics.f1_score(precision.low, recall.low), metrics.f1_score(precision.high, recall.high))
    return Interval(low, high,
                    f"F1 of the {WILSON} bounds of precision and recall (BCa undefined: every "
                    "resample gives the same value)")


def pairs_bounds(labels: np.ndarray, value: float, confidence: float) -> Interval | None:
    """Wilson's interval of `value` as a share of m = min(positives, negatives) disjoint pairs:
    a stated, conservative stand-in where every resample gives the same AUC or AP."""
    m = int(min(labels.sum(), len(labels) - labels.sum()))
    if m == 0 or value != value:
        return None
    bounds = wilson_interval(round(value * m), m, confidence)
    return Interval(bounds.low, bounds.high, f"{WILSON} over min(positives, negatives) = {m} pairs (BCa "
                                             "undefined: every resample gives the same value)")


def mean_bounds(recall: list[Interval]) -> Interval:
    """Balanced accuracy at the low ends and at the high ends of the two recalls."""
    return Interval(float(np.mean([r.low for r in recall])), float(np.mean([r.high for r in recall])),
                    f"mean of the {WILSON} bounds of the recalls (BCa undefined: every resample gives "
                    "the same value)")
