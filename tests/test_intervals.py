"""Intervals that mean what they say: Wilson for proportions, BCa for the rest, stated fallbacks;
the imbalance metrics pinned against scikit-learn; the threshold rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from chimuf.core.errors import ConfigError
from chimuf.stats import intervals, metrics
from tests.test_metrics import fixed_predictions

CLASSES = ["chihuahua", "muffin"]


def all_correct(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    return labels, np.where(labels == 1, 0.9, 0.1)


def test_thirty_correct_predictions_give_an_accuracy_interval_below_0_9():
    spread = intervals.metric_intervals(*all_correct(30), samples=200, seed=0)
    assert spread.accuracy.method == intervals.WILSON
    assert spread.accuracy.low < 0.9 and spread.accuracy.high == 1.0  # Wilson: 0.886
    assert spread.accuracy.low == pytest.approx(0.8865, abs=1e-4)
    for k in (0, 1):  # 15 of 15 right: precision and recall are proportions too
        assert spread.precision[k].low < 0.8 and spread.recall[k].low < 0.8


def test_degenerate_samples_fall_back_as_stated():
    spread = intervals.metric_intervals(*all_correct(30), samples=200, seed=0)
    # every resample has F1 = 1: BCa is undefined, F1 of the Wilson bounds is given instead
    for f1, precision, recall in zip(spread.f1, spread.precision, spread.recall, strict=True):
        assert f1.method.startswith("F1 of the Wilson bounds")
        assert f1.low == pytest.approx(metrics.f1_score(precision.low, recall.low)) and f1.low < 0.9
    assert spread.balanced_accuracy.method.startswith("mean of the Wilson bounds")
    assert spread.balanced_accuracy.low < 0.9
    # perfect separation: AUC and AP are 1 in every resample; Wilson over the 15 disjoint pairs
    for interval in (spread.roc_auc, spread.average_precision):
        assert interval.method.startswith("Wilson over min(positives, negatives) = 15 pairs")
        assert interval.low == pytest.approx(intervals.wilson(15, 15, 0.95).low)
        assert interval.high == pytest.approx(1.0)
    one = intervals.metric_intervals(np.array([1]), np.array([0.9]), samples=50, seed=0)
    assert one.roc_auc.method == one.brier.method == intervals.TOO_FEW and one.accuracy.method == "Wilson"
    one_class = intervals.metric_intervals(np.ones(20, dtype=int), np.full(20, 0.8), samples=100, seed=0)
    assert one_class.roc_auc.method == intervals.ONE_CLASS and np.isnan(one_class.roc_auc.low)
    assert one_class.average_precision.method != intervals.ONE_CLASS  # positives only: AP is 1
    assert one_class.accuracy.method == intervals.WILSON


def test_bca_intervals_cover_the_estimate_narrow_with_more_data_and_repeat_with_the_seed():
    small = intervals.metric_intervals(*fixed_predictions(100), samples=400, seed=1)
    labels, probabilities = fixed_predictions(1500)
    large = intervals.metric_intervals(labels, probabilities, samples=400, seed=1)
    predicted = metrics.predict_labels(probabilities)
    points = {"roc_auc": metrics.roc_auc(labels, probabilities),
              "average_precision": metrics.average_precision(labels, probabilities),
              "brier": metrics.brier_score(labels, probabilities),
              "balanced_accuracy": metrics.balanced_accuracy(labels, predicted)}
    for name, point in points.items():
        interval = getattr(large, name)
        assert interval.method == intervals.BCA, name
        assert interval.low <= point <= interval.high, name
        assert interval.high - interval.low < (getattr(small, name).high - getattr(small, name).low) / 2
    assert all(f.method == intervals.BCA for f in large.f1)
    again = intervals.metric_intervals(labels, probabilities, samples=400, seed=1)
    assert again == large


def test_bca_matches_scipy_on_a_plain_statistic():
    """Our wrapper passes paired resamples and the seed through unchanged."""
    from scipy.stats import bootstrap

    labels, probabilities = fixed_predictions(300)
    ours = intervals.bca(labels, probabilities, metrics.brier_rows, samples=500, confidence=0.9, seed=4)
    theirs = bootstrap((labels, probabilities), lambda y, p: np.mean((p - y) ** 2), paired=True,
                       n_resamples=500, confidence_level=0.9, method="BCa", vectorized=False,
                       rng=np.random.default_rng(4)).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), rel=1e-9)


def test_imbalance_metrics_match_scikit_learn():
    labels, probabilities = fixed_predictions(400)
    tied = np.round(probabilities, 1)  # many ties: AP groups equal scores as scikit-learn does
    predicted = metrics.predict_labels(probabilities)
    assert metrics.balanced_accuracy(labels, predicted) == pytest.approx(
        sk.balanced_accuracy_score(labels, predicted))
    for p in (probabilities, tied):
        assert metrics.average_precision(labels, p) == pytest.approx(sk.average_precision_score(labels, p))
    assert metrics.brier_score(labels, probabilities) == pytest.approx(
        sk.brier_score_loss(labels, probabilities))
    curve = metrics.precision_recall_curve(labels, probabilities)
    assert curve.recall[0] == 1.0 and curve.recall[-1] == 0.0
    assert np.isnan(metrics.balanced_accuracy(np.ones(5, dtype=int), np.ones(5, dtype=int)))


@pytest.mark.parametrize("rule", ["balanced_accuracy", "f1", "youden"])
def test_each_threshold_rule_maximises_its_own_score(rule):
    labels, probabilities = fixed_predictions(300, seed=9)
    labels = np.where(np.arange(300) < 60, labels, 0)  # imbalanced: few positives
    threshold = metrics.choose_threshold(labels, probabilities, rule)
    score = {"balanced_accuracy": lambda d: sk.balanced_accuracy_score(labels, d),
             "youden": lambda d: sk.balanced_accuracy_score(labels, d),
             "f1": lambda d: sk.f1_score(labels, d, zero_division=0)}[rule]
    best = score(metrics.predict_labels(probabilities, threshold))
    for t in np.linspace(0, 1, 101):
        assert score(metrics.predict_labels(probabilities, t)) <= best + 1e-12
    assert metrics.describe_rule(rule).endswith("on the validation split")


def test_balanced_rule_moves_the_threshold_toward_the_minority_class():
    rng = np.random.default_rng(2)
    labels = (rng.random(1000) < 0.1).astype(int)  # 10 % positives
    probabilities = np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.12, 1000), 0, 1)
    by_accuracy = metrics.choose_threshold(labels, probabilities, "accuracy")
    by_balance = metrics.choose_threshold(labels, probabilities, "balanced_accuracy")
    recall = lambda t: metrics.predict_labels(probabilities, t)[labels == 1].mean()  # noqa: E731
    assert by_balance < by_accuracy and recall(by_balance) > recall(by_accuracy)


def test_unknown_threshold_rule_is_refused():
    with pytest.raises(ConfigError, match="threshold `rule`"):
        metrics.choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "precision")


def test_chimuf_evaluate_on_thirty_correct_predictions_says_the_accuracy_could_be_below_0_9(tmp_path):
    """The numbers `chimuf evaluate` prints (before: accuracy 1.000 [1.000, 1.000])."""
    from chimuf.tools.evaluate_folder import folder_metrics, format_folder_evaluation

    labels, probabilities = all_correct(30)
    result = folder_metrics(tmp_path / "model.keras", tmp_path, CLASSES, "model", labels, probabilities, [])
    assert result.accuracy == 1.0 and result.accuracy_interval.low < 0.9
    text = format_folder_evaluation(result, as_json=False)
    assert "accuracy 1.000 [0.886, 1.000]" in text
    assert "balanced accuracy 1.000 [" in text and "Wilson for accuracy" in text
