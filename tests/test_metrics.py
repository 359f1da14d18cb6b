"""Metrics pinned against scikit-learn and against counts worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from chimuf.core.errors import DataError, ModelError
from chimuf.stats import metrics

CLASSES = ["chihuahua", "muffin"]


def fixed_predictions(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a decent but imperfect classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probabilities = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.25, n), 0, 1)
    return labels, probabilities


def test_accuracy_confusion_and_per_class_metrics_match_scikit_learn():
    labels, probabilities = fixed_predictions()
    result = metrics.metrics_at(labels, probabilities, 0.5, CLASSES)
    predicted = (probabilities > 0.5).astype(int)
    assert result.accuracy == pytest.approx(sk.accuracy_score(labels, predicted))
    assert result.confusion_matrix == sk.confusion_matrix(labels, predicted).tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, predicted)
    for k, row in enumerate(result.per_class):
        assert row.label == CLASSES[k]
        assert row.precision == pytest.approx(precision[k])
        assert row.recall == pytest.approx(recall[k])
        assert row.f1 == pytest.approx(f1[k])
        assert row.support == support[k]
    assert metrics.macro_f1(result.per_class) == pytest.approx(sk.f1_score(labels, predicted,
                                                                            average="macro"))


def test_confusion_matrix_rows_are_true_classes_and_columns_predicted():
    # 3 chihuahuas called muffins, 1 muffin called chihuahua: the off-diagonal cells differ.
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    predicted = np.array([0, 0, 1, 1, 1, 1, 1, 0])
    cm = metrics.confusion_matrix(labels, predicted)
    assert cm.tolist() == [[2, 3], [1, 2]]
    per_class = metrics.per_class_metrics(cm, CLASSES)
    assert per_class[0].recall == pytest.approx(2 / 5)  # of 5 chihuahuas, 2 found
    assert per_class[0].precision == pytest.approx(2 / 3)  # of 3 called chihuahua, 2 right


def test_probability_exactly_at_the_threshold_counts_as_class_zero_like_keras():
    assert metrics.predict_labels(np.array([0.5, 0.5000001, 0.49])).tolist() == [0, 1, 0]


def test_roc_auc_matches_scikit_learn_including_ties():
    labels, probabilities = fixed_predictions()
    tied = np.round(probabilities, 1)  # many equal probabilities
    assert metrics.roc_auc(labels, probabilities) == pytest.approx(sk.roc_auc_score(labels, probabilities))
    assert metrics.roc_auc(labels, tied) == pytest.approx(sk.roc_auc_score(labels, tied))
    curve = metrics.roc_curve(labels, probabilities)
    assert sk.auc(curve.false_positive_rate, curve.true_positive_rate) == pytest.approx(
        sk.roc_auc_score(labels, probabilities))


def test_roc_auc_of_a_single_class_is_undefined_not_a_number_that_looks_real():
    assert np.isnan(metrics.roc_auc(np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9])))


def test_mcnemar_chi_square_on_the_textbook_counts():
    # Wikipedia's example: b = 121, c = 59 → continuity-corrected χ² = (|121 − 59| − 1)² / 180.
    statistic, p_value, method = metrics.mcnemar_from_counts(121, 59)
    assert statistic == pytest.approx(61**2 / 180)
    assert p_value == pytest.approx(5.45e-6, rel=0.02)
    assert method.startswith("chi-square")


def test_mcnemar_uses_the_exact_binomial_for_few_discordant_pairs():
    statistic, p_value, method = metrics.mcnemar_from_counts(1, 9)
    assert method == "exact binomial"
    assert statistic == 1
    assert p_value == pytest.approx(2 * (1 + 10) / 2**10)  # two-sided P(X <= 1), X ~ Bin(10, 1/2)
    assert metrics.mcnemar_from_counts(0, 0)[1] == 1.0


def test_mcnemar_counts_images_only_one_model_gets_right():
    labels = np.array([0, 0, 1, 1, 1, 0])
    a = np.array([0, 0, 1, 0, 0, 1])  # right on 0, 1, 2
    b = np.array([1, 0, 1, 1, 1, 1])  # right on 1, 2, 3, 4
    test = metrics.mcnemar_test(labels, a, b, "a", "b")
    assert (test.only_a_right, test.only_b_right) == (1, 2)


def test_expected_calibration_error_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 1])
    probabilities = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.85])
    result = metrics.calibration(labels, probabilities, bins=10)
    # bin 0: p̄ 0.05, share 0 → 0.05·1/6; bin 1: p̄ 0.15, share 1/2 → 0.35·2/6;
    # bin 8: p̄ 0.85, share 1 → 0.15·1/6; bin 9: p̄ 0.95, share 1 → 0.05·2/6.
    expected = (0.05 * 1 + 0.35 * 2 + 0.15 * 1 + 0.05 * 2) / 6
    assert result.expected_calibration_error == pytest.approx(expected)
    assert [b.count for b in result.bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    assert metrics.calibration(np.array([1]), np.array([1.0]), bins=4).bins[-1].count == 1


def test_threshold_maximises_accuracy_on_the_predictions_it_is_given():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.6, 0.65, 0.7, 0.8, 0.9])  # 0.5 gets two wrong; 0.675 none
    threshold = metrics.choose_threshold(labels, probabilities, "accuracy")
    assert 0.65 < threshold < 0.7
    assert metrics.metrics_at(labels, probabilities, threshold, CLASSES).accuracy == 1.0


def test_youden_threshold_maximises_tpr_minus_fpr():
    labels, probabilities = fixed_predictions(300)
    threshold = metrics.choose_threshold(labels, probabilities, "youden")
    curve = metrics.roc_curve(labels, probabilities)
    best_j = np.max(curve.true_positive_rate - curve.false_positive_rate)
    predicted = metrics.predict_labels(probabilities, threshold)
    tpr = predicted[labels == 1].mean()
    fpr = predicted[labels == 0].mean()
    assert tpr - fpr == pytest.approx(best_j)


def test_tied_thresholds_stay_nearest_one_half():
    labels = np.array([0, 1])
    probabilities = np.array([0.1, 0.9])  # any threshold in (0.1, 0.9) is perfect
    assert metrics.choose_threshold(labels, probabilities) == pytest.approx(0.5)


def test_bad_inputs_are_refused_with_what_was_found():
    with pytest.raises(DataError, match="0 or 1"):
        metrics.check_predictions([0, 2], [0.1, 0.2])
    with pytest.raises(ModelError, match="NaN"):
        metrics.check_predictions([0, 1], [0.1, float("nan")])
    with pytest.raises(DataError, match="one label per probability"):
        metrics.check_predictions([0, 1, 1], [0.1, 0.2])
