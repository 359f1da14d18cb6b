"""The model to take home: the rule reads validation (or out-of-fold) scores only, the chosen
classifier is written as one file that predicts as the candidate did, the report says the rule,
the scores, the choice and its test numbers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from chimuf.core.engine import StageContext
from chimuf.core.errors import StageError
from chimuf.core.results import BeyondOutcome, BeyondRow, ChooseOutcome, Interval, McNemarTest
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import averaged_probabilities
from chimuf.report.markdown import render_markdown
from chimuf.stages.choose import RULE, choose_model, pick
from tests.report_fixture import complete_results
from tests.test_beyond import quiet, tiny_run  # noqa: F401  (the fixture)

NAN = float("nan")


def row(name: str, validation: float, cost: int, test: float = 0.5, flips: bool = False,
        paths: tuple[str, ...] = ("final/final.keras",)) -> BeyondRow:
    versus = None if name == "final" else McNemarTest(name, "final", 30, 10, 9.0, 0.002, "exact binomial")
    return BeyondRow(name, f"the {name}", len(paths), flips, test, Interval(test - 0.02, test + 0.02), 0.97,
                     Interval(0.95, 0.99), 1e-50, versus, validation_accuracy=validation, validation_n=473,
                     validation_source="validation", cost=cost, model_paths=list(paths))


def test_the_rule_takes_the_best_validation_score_and_never_a_test_number() -> None:
    rows = [row("final", 0.90, 100, test=0.99), row("modern", 0.95, 500, test=0.80),
            row("fold ensemble", NAN, 50, test=1.0)]
    assert pick(rows).name == "modern"  # the test numbers say otherwise: they are not read
    assert pick([*rows, row("pretrained", 0.95, 400)]).name == "pretrained"  # a tie: the cheaper
    assert pick([row("final", 0.9, 100), row("final + flips", 0.9, 200)]).name == "final"
    with pytest.raises(StageError, match="no candidate has a validation score"):
        pick([row("fold ensemble + final", NAN, 10)])


def test_the_take_home_file_predicts_as_the_chosen_candidate_with_its_validation_threshold(tiny_run):  # noqa: F811
    run_dir, cache, split = tiny_run
    paths = ("fold1/fold1.keras", "fold2/fold2.keras")
    rows = [row("final", 0.5, 10), row("fold ensemble + flips", 0.75, 40, flips=True, paths=paths),
            row("fold ensemble", 0.75, 20, paths=paths)]
    rows[1] = dataclasses.replace(rows[1], validation_accuracy=0.8)
    ctx = StageContext("choose", run_dir / "choose", run_dir, quiet())
    ctx.dir.mkdir()
    outcome = choose_model(ctx, cache, split, BeyondOutcome(4, 0.5, rows), None)
    assert outcome.chosen == "fold ensemble + flips" and outcome.rule == RULE
    taken = modelfile.load_model(run_dir / outcome.model_path)
    members = [modelfile.load_model(run_dir / p) for p in paths]
    pixels = np.load(cache.images_path)
    want = averaged_probabilities(members, pixels, flips=True)
    assert np.abs(np.asarray(taken(pixels.astype(np.float32)))[:, 0] - want).max() < 1e-5
    sidecar = modelfile.read_sidecar(run_dir / outcome.model_path)
    assert sidecar.threshold == outcome.threshold and 0 < outcome.threshold < 1
    assert sidecar.threshold_rule == "maximum accuracy on the validation split"
    test_p = want[20:]  # the cache's last 4 rows are the test split
    mistakes = int(np.sum((test_p > 0.5) != np.array([0, 1, 0, 1], dtype=bool)))
    if mistakes:  # Grad-CAM of the taken-home model's test mistakes, after the choice
        figure = outcome.gradcam_figure
        assert (run_dir / figure.path).is_file() and f"(of {mistakes})" in figure.caption
    else:
        assert outcome.gradcam_figure is None


def test_a_single_model_without_flips_is_taken_home_as_its_own_file(tiny_run):  # noqa: F811
    run_dir, cache, split = tiny_run
    ctx = StageContext("choose", run_dir / "choose", run_dir, quiet())
    ctx.dir.mkdir()
    model = modelfile.load_model(run_dir / "final/final.keras")
    first_conv = next(layer.name for layer in model.layers if type(layer).__name__ == "Conv2D")
    outcome = choose_model(ctx, cache, split, BeyondOutcome(4, 0.5, [row("final", 0.75, 10)]), None,
                           gradcam_layer=first_conv)
    assert (run_dir / outcome.model_path).read_bytes() == (run_dir / "final/final.keras").read_bytes()
    if outcome.gradcam_figure is not None:  # the layer named in candidates.gradcam_layer
        assert outcome.gradcam_figure.caption.startswith(f"Grad-CAM at {first_conv},")


def test_the_report_says_the_rule_the_scores_the_choice_and_its_test_numbers(tmp_path) -> None:
    results = complete_results(tmp_path)
    rows = [row("final", 0.90, 100, test=0.93), row("modern", 0.95, 500, test=0.962),
            row("fold ensemble + final", NAN, 600)]
    rows[2] = dataclasses.replace(rows[2], validation_source="none (its members saw the validation images)")
    results.beyond = BeyondOutcome(947, 0.54, rows)
    results.choose = ChooseOutcome(RULE, rows, "modern", "choose/modern.keras", 0.47,
                                   "maximum accuracy on the validation split")
    markdown = render_markdown(results, {})
    section = markdown.split("# The model to take home")[1]
    assert "highest validation accuracy" in section and "**modern**" in section
    assert "0.950 \\(validation\\, 473\\)" in section and "not eligible" in section
    assert "**Chosen: modern.**" in section and "0.962" in section and "p \\= 0.002" in section
    assert not math.isnan(results.choose.threshold)


def test_the_console_and_the_headline_numbers_name_the_model_to_take_home(tmp_path) -> None:
    from chimuf.core.headline import headline_numbers
    from chimuf.report.claims import headline_lines

    results = complete_results(tmp_path)
    rows = [row("final", 0.90, 100, test=0.93), row("modern", 0.95, 500, test=0.962)]
    results.beyond = BeyondOutcome(947, 0.54, rows)
    results.choose = ChooseOutcome(RULE, rows, "modern", "choose/modern.keras", 0.47, "rule")
    numbers = {n.key: n.value for n in headline_numbers(results)}
    assert numbers["take_home.test_accuracy"] == 0.962 and numbers["take_home.test_roc_auc"] == 0.97
    line = headline_lines(results)[-1]
    assert line.startswith("model to take home, chosen on validation: modern; take-home test accuracy 0.962")
    assert line.endswith("→ export/final.keras")
