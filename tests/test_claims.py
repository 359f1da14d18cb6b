"""What the data support: the statistics behind every claim, and the words written from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.proportions import (
    images_for_half_width,
    newcombe_difference,
    wilson_interval,
    worst_case_half_width,
)
from chimuf.core.results import ChanceTest, Comparison, McNemarTest, Results
from chimuf.data.split import small_split_warnings, split_precision
from chimuf.report.claims import conclusion, headline_lines
from chimuf.stats import evidence
from tests.report_fixture import complete_results

HEDGED = ("helped", "improved", "ahead of", "hurt")


# --- the statistics ----------------------------------------------------------------------------


def test_wilson_and_newcombe_intervals_match_newcombe_1998():
    """Newcombe (1998), Statistics in Medicine 17: 81/263 → [0.2553, 0.3662] (Wilson), and
    56/70 − 48/80 → [0.0524, 0.3339] (method 10, hybrid score)."""
    w = wilson_interval(81, 263)
    assert (w.low, w.high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    d = newcombe_difference(56, 70, 48, 80)
    assert (d.low, d.high) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_a_split_needs_381_images_for_a_95_percent_interval_of_5_points():
    assert images_for_half_width(0.05) == 381
    assert worst_case_half_width(381) <= 0.05 < worst_case_half_width(380)
    assert split_precision("test", 380, 0.05).small and not split_precision("test", 381, 0.05).small


def test_chance_test_is_the_exact_binomial_against_the_majority_rate():
    labels = np.array([0] * 6 + [1] * 4)
    chance = evidence.chance_test(labels, np.zeros(10), ["a", "b"], alpha=0.05)
    assert (chance.correct, chance.majority_label, chance.majority_rate) == (6, "a", 0.6)
    assert chance.p_value == pytest.approx(0.6331, abs=1e-4)  # P(X >= 6), X ~ Bin(10, 0.6)
    assert not chance.better_than_chance
    perfect = evidence.chance_test(np.arange(40) % 2, np.arange(40) % 2, ["a", "b"], alpha=0.05)
    assert perfect.better_than_chance and perfect.p_value < 1e-10


def test_mcnemar_comparison_is_distinguishable_only_below_the_level():
    close = McNemarTest("final", "model3_aug", 12, 8, 8.0, 0.5034, "exact binomial")
    far = McNemarTest("final", "model3_aug", 40, 10, 16.82, 0.00004, "chi-square, continuity-corrected")
    accuracies = {"final": 0.9, "model3_aug": 0.88}
    assert not evidence.mcnemar_comparisons([close], accuracies, 200, "final", 0.95)[0].distinguishable
    judged = evidence.mcnemar_comparisons([far], accuracies, 200, "final", 0.95)[0]
    assert judged.distinguishable and judged.topic == "final_vs_model3_aug" and judged.split == "test"


def test_the_paper_is_compared_on_its_own_data_only():
    assert evidence.paper_comparison(0.95, 947, ["chihuahua", "muffin"], 0.95)[0].n_b == 1184
    assert evidence.paper_comparison(0.95, 947, ["cat", "dog"], 0.95) == []


def test_small_splits_are_flagged_after_the_split_with_the_numbers_and_what_would_help(tmp_path):
    split = complete_results(tmp_path).split
    split.precision = [split_precision("validation", 24, 0.05), split_precision("test", 49, 0.05)]
    warnings = small_split_warnings(split)
    assert len(warnings) == 2
    assert "the validation split has 24 images" in warnings[0] and "±18.6 points" in warnings[0]
    assert "About 381 images per split" in warnings[1] and "k-fold mean" in warnings[1]


# --- the words ---------------------------------------------------------------------------------


def unescaped(paragraphs: list[str]) -> str:
    """The conclusion's Markdown as it reads (every punctuation mark is backslash-escaped)."""
    return " ".join(paragraphs).replace("\\", "")


def at_chance(run_dir: Path) -> Results:
    """The fixture run as a small folder would give it: nothing distinguishable, not even from chance."""
    r = complete_results(run_dir)
    e = r.evaluate
    e.chance = ChanceTest(n=49, correct=30, accuracy=0.612, majority_label="chihuahua", majority_rate=0.51,
                          p_value=0.11, alpha=0.05, better_than_chance=False)
    e.comparisons = [dataclasses.replace(c, distinguishable=False) for c in e.comparisons]
    r.split.precision = [split_precision("validation", 24, 0.05), split_precision("test", 49, 0.05)]
    return r


def test_conclusion_of_a_model_at_chance_says_so_first_and_claims_no_improvement(tmp_path):
    paragraphs = conclusion(at_chance(tmp_path))
    assert paragraphs[0].startswith("**The final model is not distinguishable from chance\\.**")
    assert "30 of 49 test images" in paragraphs[0]
    assert paragraphs[1].startswith("**The data are too few for fine distinctions\\.**")
    text = " ".join(paragraphs)
    assert not [word for word in HEDGED if word in text]
    assert "the data show no best of the six" in text
    assert "made no difference the data can show" in text


def test_headline_of_a_model_at_chance_starts_with_the_verdict(tmp_path):
    r = at_chance(tmp_path)
    lines = headline_lines(r)
    assert lines[0].startswith("NOT distinguishable from chance: test accuracy 0.951")
    assert lines[1].startswith("small data: validation 24 images")
    comparisons = [line for line in lines if " vs " in line]
    assert comparisons and all(line.endswith("not distinguishable") for line in comparisons)


def test_improvements_are_claimed_where_the_evidence_says_so(tmp_path):
    r = complete_results(tmp_path)
    text = unescaped(conclusion(r))
    assert "Augmentation helped Model 3 beyond noise" in text
    assert "The tuned final model improved on model3_aug beyond noise" in text
    assert "The final model is better than chance." in text
    assert not conclusion(r)[0].startswith("**The final model is not")  # chance is not the news
    assert "is not distinguishable from the paper" in text


def test_conclusion_follows_the_facts_not_a_fixed_list(tmp_path):
    r = complete_results(tmp_path)
    mixed = []
    for c in r.evaluate.comparisons:
        if c.topic == "augmentation" and c.model_a == "model1_aug":
            c = dataclasses.replace(c, distinguishable=False)
        mixed.append(c)
    r.evaluate.comparisons = mixed
    text = unescaped(conclusion(r))
    assert "For Model 1, augmentation made no difference the data can show" in text
    assert "Augmentation helped Model 2 beyond noise" in text


def test_a_comparison_with_markup_in_a_name_stays_text(tmp_path):
    r = complete_results(tmp_path)
    r.evaluate.comparisons = [Comparison("final_vs_model3_aug", "test", "final", "<b>m3</b>", 0.9, 0.8, 100,
                                         100, 0.1, None, 0.5, "McNemar", False)]
    text = " ".join(conclusion(r))
    assert "<b>" not in text and "\\<b\\>m3\\<\\/b\\>" in text
