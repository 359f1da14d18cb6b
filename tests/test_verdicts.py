"""One owner per verdict: decided once at 1 − `evaluate.confidence` (chimuf.stats.evidence) and
stored; the console, the report's first page, the beyond table and `chimuf compare` print the
stored words. Crafted p values between 0.01 and 0.05 tell a second decider at 0.05 apart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.proportions import excludes_zero, holm, newcombe_difference, newcombe_p_value
from chimuf.core.results import BeyondOutcome, McNemarTest, Results
from chimuf.report.claims import headline_lines
from chimuf.report.markdown import render_markdown
from chimuf.report.views import beyond_rows
from chimuf.stages.beyond import judged
from chimuf.stats import evidence
from chimuf.tools.compare import compare_runs, format_comparison
from tests.report_fixture import complete_results, write_run

CLASSES = ["chihuahua", "muffin"]
# 100 test images, half of each class, 60 right: exact binomial p = P(X ≥ 60 | 100, 0.5) = 0.028
LABELS = np.arange(100) % 2
PREDICTED = np.where(np.arange(100) < 60, LABELS, 1 - LABELS)


def run_at(run_dir: Path, confidence: float) -> Results:
    """The fixture run with its chance test and a beyond table decided at `confidence`."""
    r = complete_results(run_dir)
    chance = evidence.chance_test(LABELS, PREDICTED, CLASSES, 1 - confidence)
    assert 0.01 < chance.p_value < 0.05
    r.evaluate = dataclasses.replace(r.evaluate, confidence=confidence, chance=chance)
    r.evaluate.comparisons = [dataclasses.replace(c, confidence=confidence) for c in r.evaluate.comparisons]
    r.evaluate.comparisons = evidence.adjusted(r.evaluate.comparisons)
    reference = beyond_row(r, "final", None, chance)
    # McNemar p = 0.03 against the final model: distinguishable at 0.05, not at 0.01
    ensemble = beyond_row(r, "fold ensemble", McNemarTest("fold ensemble", "final", 30, 14, 5.1, 0.03,
                                                          "chi-square, continuity-corrected"), chance)
    r.beyond = BeyondOutcome(n_images=100, majority_rate=0.5, confidence=confidence,
                             rows=judged([reference, ensemble], 100, confidence))
    return r


def beyond_row(r: Results, name: str, versus: McNemarTest | None, chance):
    from chimuf.core.results import BeyondRow, Interval

    return BeyondRow(name=name, description=name, models=1, flips=False,
                     accuracy=0.6 if versus is None else 0.76, accuracy_interval=Interval(0.5, 0.7),
                     roc_auc=0.7, roc_auc_interval=Interval(0.6, 0.8), chance_p_value=chance.p_value,
                     vs_final=versus, chance=chance)


def verdict_words(r: Results, tmp_path: Path) -> dict[str, str]:
    """The chance verdict and the beyond verdict as each reader prints them."""
    console = "\n".join(headline_lines(r)).lower()
    markdown = render_markdown(r, {})
    first_page = markdown.split("\n---\n", 1)[0]  # the YAML header: its abstract is the run at a glance
    beyond = " ".join(str(cell) for row in beyond_rows(r.beyond) for cell in row).replace("*", "")
    write_run(tmp_path / "a", r)
    write_run(tmp_path / "b", r)
    compared = format_comparison(compare_runs(tmp_path / "a", tmp_path / "b"))

    def said(text: str) -> str:
        words = [w for w in ("not distinguishable from chance", "better than chance") if w in text]
        assert len(words) == 1, text[:400]
        return words[0]

    return {"console": said(console), "first page": said(first_page.replace("*", "")),
            "beyond table": said(beyond.split("not distinguishable (p")[0]), "compare": said(compared)}


@pytest.mark.parametrize(("confidence", "expected"), [(0.99, "not distinguishable from chance"),
                                                      (0.95, "better than chance")])
def test_every_reader_prints_the_verdict_decided_at_the_runs_confidence(tmp_path, confidence, expected):
    r = run_at(tmp_path, confidence)
    assert set(verdict_words(r, tmp_path).values()) == {expected}


def test_beyond_rows_against_the_final_model_follow_the_runs_confidence(tmp_path):
    strict = run_at(tmp_path / "strict", 0.99).beyond
    usual = run_at(tmp_path / "usual", 0.95).beyond
    assert not strict.rows[1].versus_final.distinguishable and usual.rows[1].versus_final.distinguishable
    assert "not distinguishable" in beyond_rows(strict)[1][-1]
    assert beyond_rows(usual)[1][-1].startswith("better, distinguishable")


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.01, 0.02, 0.04 → 3·0.01, 2·0.02, 1·0.04 = 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_family_of_comparisons_is_judged_on_holm_adjusted_p():
    tests = [McNemarTest(f"m{i}", "final", 30, 14, 0.0, p, "exact binomial")
             for i, p in enumerate((0.012, 0.03, 0.2))]
    accuracies = {"final": 0.8, "m0": 0.85, "m1": 0.84, "m2": 0.81}
    judged_ = evidence.beyond_comparisons(tests, accuracies, 100, 0.95)
    assert [c.family_size for c in judged_] == [3, 3, 3]
    assert [c.p_adjusted for c in judged_] == pytest.approx([0.036, 0.06, 0.2])
    assert [c.distinguishable for c in judged_] == [True, False, False]  # 0.03 alone would pass


def test_newcombe_p_value_agrees_with_its_interval_at_every_level():
    for k1, n1, k2, n2 in ((56, 70, 48, 80), (45, 50, 40, 50), (10, 20, 10, 20), (300, 472, 280, 472)):
        p = newcombe_p_value(k1, n1, k2, n2)
        for confidence in (0.8, 0.9, 0.95, 0.99):
            if abs(p - (1 - confidence)) > 1e-6:
                assert excludes_zero(newcombe_difference(k1, n1, k2, n2, confidence)) == (p < 1 - confidence)
    assert newcombe_p_value(10, 20, 10, 20) == 1.0
