"""The evaluate stage on a tiny study, and `chimuf evaluate` on a folder with bad files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from chimuf.core.config import AuditConfig, EvaluateConfig, SplitConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import DataError, StageError
from chimuf.core.results import (
    AuditOutcome,
    DuplicateGroup,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
)
from chimuf.ml.modelfiles import modelfile
from chimuf.stages import evaluate
from chimuf.stats import metrics
from chimuf.tools import evaluate_folder
from tests.conftest import make_dataset, make_image

SIZE = 16


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


def training(name: str, architecture: str, augmented: bool, model_path: str) -> TrainingOutcome:
    return TrainingOutcome(name=name, architecture=architecture, augmented=augmented, params=0, layers=[],
                           epochs_run=1, best_epoch=1, stopped_early=False, best_val_loss=0.0,
                           best_val_accuracy=0.0, history=[], history_csv="", model_path=model_path,
                           figure=None, wall_s=0.0, images_per_s=0.0, precision="float32")


def tiny_trained_model(architecture: str, images: np.ndarray, labels: np.ndarray, seed: int,
                       epochs: int):
    import keras

    from chimuf.ml.architectures.models import build_model, compile_model

    keras.utils.set_random_seed(seed)
    model = build_model(architecture, SIZE)
    compile_model(model, 3e-3)
    if epochs:
        model.fit(images.astype(np.float32), labels.astype(np.float32), epochs=epochs, batch_size=8,
                  verbose=0)
    return model


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Audit, split and cache of 20+20 generated images, a final model and four trainings."""
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache, load_images
    from chimuf.data.split import split_dataset

    root = tmp_path_factory.mktemp("study")
    data = make_dataset(root / "data", per_class=20)
    run_dir = root / "run"
    audit = audit_folder(data, AuditConfig(), quiet())
    split = split_dataset(audit, SplitConfig(test_fraction=0.3, validation_fraction=0.3), seed=1)
    cache = build_cache(audit, data, SIZE, root / "cache", quiet())
    images = load_images(cache)
    rows = images.rows(split.train)
    x, y = np.asarray(images.images)[rows], images.labels[rows]
    trainings = []
    for i, (name, architecture, augmented) in enumerate([
            ("model1", "model1", False), ("model1_aug", "model1", True),
            ("model3", "model3", False), ("model3_aug", "model3", True)]):
        path = run_dir / "train" / f"{name}.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        tiny_trained_model(architecture, x, y, seed=i, epochs=1).save(path)
        trainings.append(training(name, architecture, augmented, f"train/{name}.keras"))
    final_path = run_dir / "final" / "final.keras"
    final_path.parent.mkdir(parents=True)
    tiny_trained_model("tuned", x, y, seed=9, epochs=4).save(final_path)
    final = training("final", "tuned", True, "final/final.keras")
    return {"audit": audit, "split": split, "cache": cache, "run_dir": run_dir, "final": final,
            "train": TrainOutcome(trainings, [])}


@pytest.fixture(scope="module")
def evaluated(tiny_study):
    s = tiny_study
    ctx = StageContext("evaluate", s["run_dir"] / "evaluate", s["run_dir"], quiet())
    ctx.dir.mkdir(parents=True, exist_ok=True)
    outcome = evaluate.evaluate_final(ctx, s["cache"], s["split"], s["audit"], s["final"], s["train"],
                                      EvaluateConfig(bootstrap_samples=200), TrainConfig(batch_size=8),
                                      seed=3)
    return outcome


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_metric_can_be_recomputed_from_the_predictions_csv(tiny_study, evaluated):
    rows = read_csv(tiny_study["run_dir"] / evaluated.predictions_csv)
    assert [r["path"] for r in rows] == tiny_study["split"].test
    labels = np.array([evaluated.classes.index(r["true_label"]) for r in rows])
    probabilities = np.array([float(r["probability"]) for r in rows])
    predicted = (probabilities > 0.5).astype(int)
    assert evaluated.n_images == len(rows)
    assert evaluated.accuracy == pytest.approx(sk.accuracy_score(labels, predicted))
    assert evaluated.confusion_matrix == sk.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    if len(set(labels)) == 2:
        assert evaluated.roc_auc == pytest.approx(sk.roc_auc_score(labels, probabilities), abs=1e-6)
    assert [c.support for c in evaluated.per_class] == np.bincount(labels, minlength=2).tolist()


def test_accuracy_agrees_with_keras_evaluate(evaluated):
    assert evaluated.keras_accuracy == pytest.approx(evaluated.accuracy, abs=1e-6)


def test_intervals_cover_the_estimates(evaluated):
    assert evaluated.accuracy_interval.low <= evaluated.accuracy <= evaluated.accuracy_interval.high
    for row in evaluated.per_class:
        assert row.f1_interval.low <= row.f1 <= row.f1_interval.high
    assert evaluated.bootstrap_samples == 200


def test_figures_and_csvs_are_files_relative_to_the_run_folder(tiny_study, evaluated):
    run_dir = tiny_study["run_dir"]
    names = [Path(f.path).name for f in evaluated.figures]
    assert names == ["confusion_matrix.png", "roc_curve.png", "precision_recall.png", "reliability.png"]
    for figure in evaluated.figures:
        assert not Path(figure.path).is_absolute()
        assert (run_dir / figure.path).read_bytes().startswith(b"\x89PNG")
    validation = read_csv(run_dir / evaluated.validation_predictions_csv)
    assert [r["path"] for r in validation] == tiny_study["split"].validation


def test_mcnemar_compares_final_with_model3_aug_and_each_model_with_and_without_augmentation(
        tiny_study, evaluated):
    pairs = [(t.model_a, t.model_b) for t in evaluated.mcnemar]
    assert pairs == [("final", "model3_aug"), ("model1_aug", "model1"), ("model3_aug", "model3")]
    rows = read_csv(tiny_study["run_dir"] / evaluated.predictions_csv)
    labels = np.array([evaluated.classes.index(r["true_label"]) for r in rows])
    final = np.array([float(r["probability"]) for r in rows]) > 0.5
    other = np.array([float(r["probability_model3_aug"]) for r in rows]) > 0.5
    first = evaluated.mcnemar[0]
    assert first.only_a_right == int(((final == labels) & (other != labels)).sum())
    assert first.only_b_right == int(((other == labels) & (final != labels)).sum())


def test_evaluation_weighs_chance_and_every_comparison_of_the_report(tiny_study, evaluated):
    from scipy.stats import binomtest

    chance = evaluated.chance
    labels = np.array(evaluated.predictions.labels)
    assert chance.n == evaluated.n_images and chance.correct == round(evaluated.accuracy * chance.n)
    assert chance.majority_rate == pytest.approx(np.bincount(labels).max() / len(labels))
    expected = binomtest(chance.correct, chance.n, chance.majority_rate, alternative="greater").pvalue
    assert chance.p_value == pytest.approx(expected)
    assert chance.better_than_chance == (chance.p_value < 0.05)
    topics = {(c.topic, c.split) for c in evaluated.comparisons}
    assert topics == {("best_training", "validation"), ("augmentation", "validation"),
                      ("final_vs_model3_aug", "validation"), ("augmentation", "test"),
                      ("final_vs_model3_aug", "test"), ("paper", "test")}  # classes named as the paper's
    (paper,) = evaluated.compared("paper")
    assert (paper.model_b, paper.n_a, paper.n_b) == ("paper", evaluated.n_images, 1184)
    on_test = [c for c in evaluated.comparisons if c.split == "test" and c.topic != "paper"]
    assert [(c.model_a, c.model_b, c.p_value) for c in on_test] == [
        (m.model_a, m.model_b, m.p_value) for m in evaluated.mcnemar]
    n_validation = len(tiny_study["split"].validation)
    assert all(c.n_a == c.n_b == n_validation and c.interval is not None
               for c in evaluated.comparisons if c.split == "validation")


def test_imbalance_numbers_can_be_recomputed_from_the_predictions_csv(tiny_study, evaluated):
    rows = read_csv(tiny_study["run_dir"] / evaluated.predictions_csv)
    labels = np.array([evaluated.classes.index(r["true_label"]) for r in rows])
    probabilities = np.array([float(r["probability"]) for r in rows])
    predicted = (probabilities > 0.5).astype(int)
    assert evaluated.balanced_accuracy == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert evaluated.average_precision == pytest.approx(sk.average_precision_score(labels, probabilities))
    assert evaluated.brier_score == pytest.approx(sk.brier_score_loss(labels, probabilities))
    assert evaluated.accuracy_interval.method == "Wilson"
    assert all(i is not None and i.method for i in (evaluated.balanced_accuracy_interval,
                                                    evaluated.average_precision_interval,
                                                    evaluated.brier_interval))
    assert evaluated.pr_figure is not None and evaluated.pr_figure in evaluated.figures


def test_threshold_rule_comes_from_the_config(tiny_study):
    s = tiny_study
    ctx = StageContext("evaluate", s["run_dir"] / "evaluate-rule", s["run_dir"], quiet())
    ctx.dir.mkdir(parents=True, exist_ok=True)
    outcome = evaluate.evaluate_final(ctx, s["cache"], s["split"], s["audit"], s["final"],
                                      TrainOutcome([], []),
                                      EvaluateConfig(bootstrap_samples=20, threshold_rule="f1"),
                                      TrainConfig(batch_size=8), seed=3)
    assert outcome.at_validation_threshold.rule == metrics.describe_rule("f1")


def test_threshold_is_chosen_on_validation_predictions_only(tiny_study, monkeypatch):
    seen = []
    choose = metrics.choose_threshold

    def spy(labels, probabilities, rule="accuracy"):
        seen.append(np.asarray(probabilities).copy())
        return choose(labels, probabilities, rule)

    monkeypatch.setattr(metrics, "choose_threshold", spy)
    s = tiny_study
    ctx = StageContext("evaluate", s["run_dir"] / "evaluate-spy", s["run_dir"], quiet())
    ctx.dir.mkdir(parents=True, exist_ok=True)
    outcome = evaluate.evaluate_final(ctx, s["cache"], s["split"], s["audit"], s["final"],
                                      TrainOutcome([], []), EvaluateConfig(bootstrap_samples=50),
                                      TrainConfig(batch_size=8), seed=3)
    validation = read_csv(s["run_dir"] / outcome.validation_predictions_csv)
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], [float(r["probability"]) for r in validation], atol=1e-7)
    assert outcome.at_validation_threshold.threshold == pytest.approx(choose(
        [outcome.classes.index(r["true_label"]) for r in validation],
        [float(r["probability"]) for r in validation]), abs=1e-6)
    assert "validation" in outcome.at_validation_threshold.rule


def test_leakage_free_mask_drops_test_images_with_a_copy_in_training():
    split = SplitOutcome(classes=["a", "b"], train=["a/1", "b/1"], validation=["a/2"],
                         test=["a/3", "b/3", "a/4"], counts=[], groups=[], digest="")
    audit = AuditOutcome(data_dir="", classes=["a", "b"], files=[], counts=[], skipped=[], digest="",
                         duplicate_groups=[
                             DuplicateGroup("near", ["a/1", "a/3"], ["a", "a"], False),  # leaks
                             DuplicateGroup("exact", ["a/4", "b/3"], ["a", "b"], True),  # test only
                         ])
    assert evaluate.leakage_free_mask(split, audit).tolist() == [False, True, True]


def test_disagreement_with_keras_stops_the_stage():
    evaluate.check_agreement(0.75, 0.75 + 1e-9, 100)
    with pytest.raises(StageError, match="misaligned"):
        evaluate.check_agreement(0.75, 0.76, 100)


# --- `chimuf evaluate MODEL DIR` -----------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory, tiny_study):
    path = tiny_study["run_dir"] / "final" / "final.keras"
    copy = tmp_path_factory.mktemp("model") / "final.keras"
    copy.write_bytes(path.read_bytes())
    modelfile.write_classes(copy, ["chihuahua", "muffin"])
    return copy


def folder_with_bad_files(root: Path) -> Path:
    data = make_dataset(root, per_class=4)
    good = make_image(root / "tmp.jpg", size=128, fmt="JPEG")
    whole = good.read_bytes()
    (root / "muffin" / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # header intact
    good.unlink()
    (root / "chihuahua" / "notes.jpg").write_text("this is text, not an image")
    return data


def test_folder_with_bad_files_reports_them_and_evaluates_the_rest(folder_model, tmp_path):
    data = folder_with_bad_files(tmp_path / "folder")
    result = evaluate_folder.evaluate_folder(folder_model, data, AuditConfig(), quiet())
    assert result.n_images == 8
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == {"muffin/truncated.jpg", "chihuahua/notes.jpg"}
    assert "truncated" in reasons["muffin/truncated.jpg"].lower()
    assert "not a JPEG" in reasons["chihuahua/notes.jpg"]
    assert sum(sum(row) for row in result.confusion_matrix) == 8


def test_evaluate_json_has_the_documented_keys(folder_model, tmp_path):
    data = folder_with_bad_files(tmp_path / "folder")
    result = evaluate_folder.evaluate_folder(folder_model, data, AuditConfig(), quiet())
    parsed = json.loads(evaluate_folder.format_folder_evaluation(result, as_json=True))
    for key in ("classes", "n_images", "accuracy", "roc_auc", "confusion_matrix", "per_class", "skipped"):
        assert key in parsed
    assert parsed["classes"] == ["chihuahua", "muffin"]
    assert {"label", "precision", "recall", "f1", "support"} <= set(parsed["per_class"][0])
    assert {"path", "reason"} <= set(parsed["skipped"][0])
    text = evaluate_folder.format_folder_evaluation(result, as_json=False)
    assert "rows = true class" in text and "muffin/truncated.jpg" in text


def test_folder_whose_classes_differ_from_the_model_is_refused(folder_model, tmp_path):
    root = tmp_path / "other"
    for label in ("cat", "dog"):
        make_image(root / label / "1.png")
    with pytest.raises(DataError, match=r"trained on \['chihuahua', 'muffin'\]"):
        evaluate_folder.evaluate_folder(folder_model, root, AuditConfig(), quiet())


def test_without_a_classes_file_the_folder_names_the_classes_with_a_warning(folder_model, tmp_path):
    bare = tmp_path / "bare.keras"
    bare.write_bytes(folder_model.read_bytes())
    data = make_dataset(tmp_path / "folder", per_class=3)
    stream = io.StringIO()
    result = evaluate_folder.evaluate_folder(bare, data, AuditConfig(), Console(stream=stream, live=False))
    assert result.classes_from == "folder"
    assert "bare.classes.json" in stream.getvalue()


def test_cli_evaluate_json_prints_one_object(folder_model, tmp_path, capsys):
    from chimuf.cli import main

    data = folder_with_bad_files(tmp_path / "folder")
    assert main(["-q", "evaluate", str(folder_model), str(data), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["n_images"] == 8


def test_predictions_csv_defuses_file_names_that_start_a_formula_and_keeps_numbers():
    text = evaluate.predictions_table(["muffin/=1+1.jpg", "=cmd|'/c calc'!A0.png"], np.array([1, 0]),
                                      np.array([0.25, 0.75]), ["chihuahua", "muffin"],
                                      {"model1": np.array([0.5, 1.0])})
    rows = list(csv.reader(io.StringIO(text)))
    assert [row[0] for row in rows[1:]] == ["muffin/=1+1.jpg", "'=cmd|'/c calc'!A0.png"]
    assert rows[1][2:] == ["0.25000000", "0.50000000"]


def test_every_csv_chimuf_writes_goes_through_the_one_defusing_helper():
    root = Path(__file__).resolve().parents[1] / "chimuf"
    writers = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if "csv.writer(" in p.read_text()]
    assert writers == ["core/files.py"]
