"""Metrics of a binary classifier from its labels and predicted probabilities (paper section 7).

Everything here is plain numpy/scipy on two arrays: `labels` (0 or 1, the index into `classes`)
and `probabilities` (the model's sigmoid output, P(classes[1])). No TensorFlow, so every number
of the report can be recomputed from the predictions CSV alone.

Conventions, stated once:

* An image is predicted as classes[1] when its probability is *greater than* the threshold, the
  rule Keras' own `binary_accuracy` applies, so our accuracy and `model.evaluate()` agree.
* The confusion matrix has one row per true class and one column per predicted class, both in
  `classes` order: `cm[i][j]` counts images of class i predicted as class j. (The paper's table
  labels its off-diagonal cells FP and FN the wrong way round; this orientation is unambiguous.)
* Precision, recall and F1 of a class that is never predicted (or never present) are 0.0, as
  scikit-learn's `zero_division=0` gives.
* Confidence intervals live in chimuf.stats.intervals (Wilson for proportions, BCa bootstrap for
  the rest); the row-wise statistics here (`*_rows`) are what its bootstrap evaluates.
* Imbalance: balanced accuracy (the mean of the two recalls), average precision (the area under
  the precision-recall curve of classes[1], as scikit-learn's `average_precision_score`) and the
  Brier score (mean squared error of P(classes[1])) do not reward always answering the larger class.
* Calibration is measured on P(classes[1]): in each probability bin, the mean predicted
  probability against the observed share of classes[1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.config import THRESHOLD_RULES
from chimuf.core.errors import ConfigError, DataError, ModelError
from chimuf.core.results import DEFAULT_THRESHOLD, ClassMetrics, Interval, McNemarTest, ThresholdMetrics

if TYPE_CHECKING:
    from collections.abc import Sequence

# Below this many discordant pairs McNemar's test uses the exact binomial distribution; the
# chi-square approximation is poor for small counts (a common rule of thumb is 25).
MCNEMAR_EXACT_BELOW = 25


# --- inputs ------------------------------------------------------------------------------------


def check_predictions(labels: Sequence[int] | np.ndarray,
                      probabilities: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int 0/1 and probabilities as float64 in [0, 1], of equal length, or an error."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if y.ndim != 1 or len(y) != len(p):
        raise DataError(
            f"expected one label per probability; got {y.shape} labels and {p.shape} probabilities"
        )
    if len(y) and not np.isin(y, (0, 1)).all():
        found = sorted({int(v) for v in np.unique(y)} - {0, 1})[:5]
        raise DataError(f"labels must be 0 or 1 (the index into the two classes); found {found}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        bad = p[~(np.isfinite(p) & (p >= 0) & (p <= 1))][:5].tolist()
        raise ModelError(
            f"the model gave probabilities outside [0, 1] or NaN (e.g. {bad}); it needs a single "
            "sigmoid output. Retrain it, or check that its weights are not damaged."
        )
    return y.astype(np.int64), p


def predict_labels(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """1 (classes[1]) where the probability is greater than `threshold`, else 0: the rule of
    chimuf.core.results.predicted_id, for arrays."""
    return (np.asarray(probabilities) > threshold).astype(np.int64)


# --- counts and the metrics made from them -----------------------------------------------------


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predicted))) if len(labels) else float("nan")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """2×2 counts, rows = true class, columns = predicted class: cm[i, j] = #(true i, predicted j)."""
    cells = 2 * np.asarray(labels, dtype=np.int64) + np.asarray(predicted, dtype=np.int64)
    return np.bincount(cells, minlength=4).reshape(2, 2)


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of each class, read off a confusion matrix."""
    rows = []
    for k, label in enumerate(classes):
        true_positive = int(cm[k, k])
        predicted_k = int(cm[:, k].sum())  # column: everything predicted as k
        actual_k = int(cm[k, :].sum())  # row: everything that is k
        precision = true_positive / predicted_k if predicted_k else 0.0
        recall = true_positive / actual_k if actual_k else 0.0
        rows.append(ClassMetrics(label, precision, recall, f1_score(precision, recall), actual_k))
    return rows


def f1_score(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def with_intervals(rows: Sequence[ClassMetrics], f1: Sequence[Interval], precision: Sequence[Interval],
                   recall: Sequence[Interval]) -> list[ClassMetrics]:
    """Per-class metrics with each class's F1, precision and recall intervals attached."""
    return [ClassMetrics(row.label, row.precision, row.recall, row.f1, row.support, f1_interval=f,
                         precision_interval=pr, recall_interval=rc)
            for row, f, pr, rc in zip(rows, f1, precision, recall, strict=True)]


def macro_f1(per_class: Sequence[ClassMetrics]) -> float:
    return float(np.mean([c.f1 for c in per_class]))


def metrics_at(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
               classes: Sequence[str], rule: str = "") -> ThresholdMetrics:
    """Accuracy, confusion matrix and per-class metrics when deciding at `threshold`."""
    y, p = check_predictions(labels, probabilities)
    predicted = predict_labels(p, threshold)
    cm = confusion_matrix(y, predicted)
    return ThresholdMetrics(threshold=float(threshold), accuracy=accuracy(y, predicted),
                            confusion_matrix=cm.tolist(), per_class=per_class_metrics(cm, classes),
                            rule=rule)


# --- ROC ---------------------------------------------------------------------------------------


@dataclass
class RocCurve:
    false_positive_rate: np.ndarray  # (k,), increasing from 0 to 1
    true_positive_rate: np.ndarray  # (k,)
    thresholds: np.ndarray  # (k,), the decision threshold of each point


def roc_curve(labels: np.ndarray, probabilities: np.ndarray) -> RocCurve:
    """ROC points with classes[1] as the positive class (scikit-learn's curve, untrimmed)."""
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    y, p = check_predictions(labels, probabilities)
    fpr, tpr, thresholds = sklearn_roc_curve(y, p, drop_intermediate=False)
    return RocCurve(fpr, tpr, thresholds)


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present (the area is undefined).

    Computed as the Mann-Whitney statistic: the chance that a random classes[1] image gets a
    higher probability than a random classes[0] image, ties counting one half.
    """
    y, p = check_predictions(labels, probabilities)
    return float(rank_auc(y[np.newaxis, :], p[np.newaxis, :])[0])


def rank_auc(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """AUC of each row of (m, n) label and probability matrices; NaN for one-class rows."""
    from scipy.stats import rankdata

    ranks = rankdata(probabilities, axis=1)  # (m, n), ties get their average rank
    positives = labels.sum(axis=1).astype(np.float64)  # (m,)
    negatives = labels.shape[1] - positives
    rank_sum = (ranks * labels).sum(axis=1)  # (m,)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    auc[(positives == 0) | (negatives == 0)] = np.nan
    return auc


# --- imbalance: balanced accuracy, average precision, Brier --------------------------------------


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The mean of the two classes' recalls; NaN when a class is absent (it has no recall)."""
    y, d = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return float(balanced_accuracy_rows(y[np.newaxis, :], d[np.newaxis, :])[0])


def balanced_accuracy_rows(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of (m, n) label and predicted-label matrices."""
    positives = labels.sum(axis=1)  # (m,)
    negatives = labels.shape[1] - positives
    hits_1 = ((labels == 1) & (predicted == 1)).sum(axis=1)
    hits_0 = ((labels == 0) & (predicted == 0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (hits_1 / positives + hits_0 / negatives) / 2
    out[(positives == 0) | (negatives == 0)] = np.nan
    return out.astype(np.float64)


def average_precision(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Average precision of classes[1] (scikit-learn's definition: Σ (R_k − R_{k−1}) · P_k over
    the distinct thresholds); NaN when classes[1] is absent."""
    y, p = check_predictions(labels, probabilities)
    return float(average_precision_rows(y[np.newaxis, :], p[np.newaxis, :])[0])


def average_precision_rows(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Average precision of each row of (m, n) matrices.

    Each positive image contributes the precision at the end of its group of tied scores (the
    threshold just below its score), divided by the number of positives."""
    n = labels.shape[1]
    order = np.argsort(-probabilities, axis=1, kind="stable")  # (m, n) highest first
    y = np.take_along_axis(labels, order, axis=1).astype(np.float64)
    p = np.take_along_axis(probabilities, order, axis=1)
    precision = np.cumsum(y, axis=1) / np.arange(1, n + 1)  # (m, n) at each cut
    # 1. the last position of each group of equal scores
    group_end = np.ones_like(p, dtype=bool)
    group_end[:, :-1] = p[:, :-1] != p[:, 1:]
    # 2. for every position, the index of its group's end (backward running minimum)
    index = np.where(group_end, np.arange(n), n - 1)
    index = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1]
    at_end = np.take_along_axis(precision, index, axis=1)
    positives = y.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (y * at_end).sum(axis=1) / positives
    out[positives == 0] = np.nan
    return out


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between P(classes[1]) and the label: 0 is perfect, 0.25 is a
    constant 0.5; it rewards probabilities that are right *and* sure."""
    y, p = check_predictions(labels, probabilities)
    return float(brier_rows(y[np.newaxis, :], p[np.newaxis, :])[0]) if len(y) else float("nan")


def brier_rows(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return ((probabilities - labels) ** 2).mean(axis=1)


@dataclass
class PrecisionRecallCurve:
    precision: np.ndarray  # (k,)
    recall: np.ndarray  # (k,), decreasing to 0
    thresholds: np.ndarray  # (k − 1,)


def precision_recall_curve(labels: np.ndarray, probabilities: np.ndarray) -> PrecisionRecallCurve:
    """Precision-recall points with classes[1] as the positive class (scikit-learn's curve)."""
    from sklearn.metrics import precision_recall_curve as sklearn_pr_curve

    y, p = check_predictions(labels, probabilities)
    precision, recall, thresholds = sklearn_pr_curve(y, p)
    return PrecisionRecallCurve(precision, recall, thresholds)


def f1_rows(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of one class in each row of (m, n) boolean matrices: 2·TP / (2·TP + FP + FN)."""
    true_positive = (actual & predicted).sum(axis=1)
    wrong = (actual ^ predicted).sum(axis=1)  # FP + FN
    denominator = 2 * true_positive + wrong
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positive / denominator, 0.0)


# --- McNemar's test ----------------------------------------------------------------------------


def mcnemar_test(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray,
                 model_a: str, model_b: str) -> McNemarTest:
    """Do two models err on different images more often than chance allows?

    Only the discordant images count: b = right by A only, c = right by B only. With fewer than
    MCNEMAR_EXACT_BELOW of them, the exact two-sided binomial test of b against Bin(b + c, 1/2)
    (statistic = min(b, c)); else the chi-square test with continuity correction,
    (|b - c| - 1)² / (b + c), one degree of freedom.
    """
    y = np.asarray(labels)
    right_a = np.asarray(predicted_a) == y
    right_b = np.asarray(predicted_b) == y
    only_a = int((right_a & ~right_b).sum())
    only_b = int((right_b & ~right_a).sum())
    statistic, p_value, method = mcnemar_from_counts(only_a, only_b)
    return McNemarTest(model_a, model_b, only_a, only_b, statistic, p_value, method=method)


def mcnemar_from_counts(only_a: int, only_b: int) -> tuple[float, float, str]:
    """(statistic, p value, method) of McNemar's test on the two discordant counts."""
    from scipy.stats import binomtest, chi2

    discordant = only_a + only_b
    if discordant == 0:
        return 0.0, 1.0, "exact binomial"
    if discordant < MCNEMAR_EXACT_BELOW:
        p_value = binomtest(min(only_a, only_b), discordant, 0.5).pvalue
        return float(min(only_a, only_b)), float(min(1.0, p_value)), "exact binomial"
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    return float(statistic), float(chi2.sf(statistic, df=1)), "chi-square, continuity-corrected"


# --- calibration -------------------------------------------------------------------------------


@dataclass
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_probability: float  # mean predicted P(classes[1]) in the bin; NaN when empty
    observed_fraction: float  # share of classes[1] among the bin's images; NaN when empty


@dataclass
class Calibration:
    expected_calibration_error: float
    bins: list[CalibrationBin]


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Calibration:
    """Reliability bins of P(classes[1]) and the expected calibration error.

    ECE = Σ_bins (n_bin / n) · |observed share of classes[1] − mean predicted probability|, with
    `bins` equal-width bins over [0, 1] (the last one includes 1.0).
    """
    y, p = check_predictions(labels, probabilities)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)  # (n,) bin of each image
    table, error = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count == 0:
            table.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), 0, float("nan"),
                                        float("nan")))
            continue
        mean_p, observed = float(p[inside].mean()), float(y[inside].mean())
        error += count / len(y) * abs(observed - mean_p)
        table.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, mean_p, observed))
    return Calibration(float(error) if len(y) else float("nan"), table)


# --- choosing a decision threshold -------------------------------------------------------------


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, rule: str = "accuracy") -> float:
    """The decision threshold that maximises `rule` on these (validation) predictions.

    rule "accuracy": the share of images classified right; "balanced_accuracy": the mean of the
    two recalls; "f1": F1 of classes[1]; "youden": Youden's J = TPR − FPR (sensitivity +
    specificity − 1, which is 2 · balanced accuracy − 1: the two rules pick the same threshold).
    Candidates are 0, 1 and the midpoints between consecutive
    distinct probabilities, so the threshold sits in the middle of a gap rather than on an
    image. Among equally good thresholds the one nearest 0.5 wins, so a tie never moves the
    threshold away from the usual one.
    """
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold `rule` must be one of {', '.join(THRESHOLD_RULES)}; got {rule!r}")
    y, p = check_predictions(labels, probabilities)
    distinct = np.unique(p)
    candidates = np.concatenate([[0.0], (distinct[:-1] + distinct[1:]) / 2, [1.0]])  # (k,)
    predicted = p[np.newaxis, :] > candidates[:, np.newaxis]  # (k, n)
    score = threshold_scores(y.astype(bool), predicted, rule)  # (k,)
    best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
    nearest = best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]
    return float(candidates[nearest])


def threshold_scores(positive: np.ndarray, predicted: np.ndarray, rule: str) -> np.ndarray:
    """The score of `rule` for each row of (k, n) predictions against (n,) true labels."""
    if rule == "accuracy":
        return (predicted == positive).mean(axis=1)
    if rule == "f1":
        return f1_rows(np.broadcast_to(positive, predicted.shape), predicted)
    tpr = (predicted & positive).sum(axis=1) / max(positive.sum(), 1)
    fpr = (predicted & ~positive).sum(axis=1) / max((~positive).sum(), 1)
    return tpr - fpr if rule == "youden" else (tpr + 1 - fpr) / 2


def describe_rule(rule: str) -> str:
    """How the report names a threshold rule."""
    return {"accuracy": "maximum accuracy on the validation split",
            "balanced_accuracy": "maximum balanced accuracy on the validation split",
            "f1": "maximum F1 of the positive class on the validation split",
            "youden": "maximum Youden's J (TPR − FPR) on the validation split"}[rule]
