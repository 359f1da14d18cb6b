"""Suspect labels: confident learning on out-of-fold predictions finds planted label flips."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.config import AuditConfig, AugmentConfig, KFoldConfig, LabelsConfig, SplitConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import StageError
from chimuf.core.results import DuplicateGroup, KFoldOutcome, Prediction
from chimuf.stages import kfold, labels
from tests.conftest import make_image

QUIET = Console(stream=io.StringIO(), live=False)


def planted(n: int, flips: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given labels, out-of-fold P(class 1), indices flipped): two well separated classes, as a
    model that learned them would score them, then `flips` labels turned over."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2  # (n,) half each
    p = np.clip(np.where(truth == 1, 0.85, 0.15) + rng.normal(0, 0.1, n), 0.01, 0.99)
    flipped = rng.choice(n, flips, replace=False)
    given = truth.copy()
    given[flipped] = 1 - given[flipped]
    return given, p, flipped


def test_confident_learning_finds_planted_flips_and_ranks_them_first():
    given, p, flipped = planted(200, 12, seed=3)
    found = labels.find_suspects(given, p)
    hits = set(found.tolist()) & set(flipped.tolist())
    assert len(hits) >= 9  # recall >= 0.75: flips whose probability sits near 0.5 look like mistakes
    assert len(hits) / len(found) >= 0.9  # precision
    probability_given = np.where(given[found] == 1, p[found], 1 - p[found])
    assert np.all(np.diff(probability_given) >= 0)  # lowest probability of the given label first


def test_too_few_images_of_a_class_give_no_suspects_rather_than_a_guess():
    given = np.array([0] * 20 + [1] * 3)
    assert labels.find_suspects(given, np.full(23, 0.5)).size == 0
    assert labels.find_suspects(np.zeros(0, dtype=np.int64), np.zeros(0)).size == 0


def test_a_duplicate_filed_under_the_suggested_class_agrees_with_the_suspect():
    groups = [DuplicateGroup("near", ["a/1.png", "b/7.png"], ["a", "b"], True),
              DuplicateGroup("exact", ["a/1.png", "a/2.png"], ["a", "a"], False)]
    item = Prediction("a/1.png", 0, 0.97)  # filed under a, the model says b
    s = labels.suspect(item, ["a", "b"], 2, {"a/1.png": "train"}, groups)
    assert (s.given_label, s.suggested_label, s.fold, s.split) == ("a", "b", 2, "train")
    assert s.probability_given == pytest.approx(0.03)
    assert s.agreeing_duplicates == ["b/7.png"]
    lonely = labels.suspect(Prediction("a/9.png", 0, 0.9), ["a", "b"], 1, {}, groups)
    assert lonely.agreeing_duplicates == []


def test_kfold_without_out_of_fold_predictions_is_refused_with_what_to_do():
    old = KFoldOutcome(folds=[], mean_accuracy=0.5, std_accuracy=0.0, mean_loss=0.7, std_loss=0.0,
                       figure=None)
    with pytest.raises(StageError, match=r"delete stages/kfold\.json"):
        labels.check_predictions(old)


def test_suspects_csv_lists_every_suspect_in_rank_order():
    from chimuf.core.results import SuspectLabel

    rows = list(csv.DictReader(io.StringIO(labels.suspects_table([
        SuspectLabel("a/$x$.png", "a", "b", 0.01, 1, "train", ["b/1.png", "b/2.png"]),
        SuspectLabel("b/3.png", "b", "a", 0.2, 2, "validation")]))))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert rows[0]["path"] == "a/$x$.png" and rows[0]["agreeing_duplicates"] == "b/1.png;b/2.png"


# --- end to end: k-fold on images with planted flips, then the labels stage ---------------------

SIZE = 16
PER_CLASS, FLIPS = 24, 3
HYPERPARAMETERS = {"conv1_filters": 4, "conv2_filters": 8, "conv3_filters": 8, "dense_units": 8,
                   "dropout_conv": 0.0, "dropout_dense": 0.0}
NO_AUGMENTATION = AugmentConfig(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0,
                                zoom_range=0, channel_shift_range=0, horizontal_flip=False)


def flipped_dataset(root: Path) -> set[str]:
    """conftest's corner images (chihuahuas bright top-left, muffins bottom-right), the first
    FLIPS of each class filed under the other class; returns the flipped files' paths."""
    flipped = set()
    classes = (("chihuahua", "top-left", "muffin"), ("muffin", "bottom-right", "chihuahua"))
    for label, corner, other in classes:
        for i in range(PER_CLASS):
            folder = other if i < FLIPS else label
            path = f"{folder}/{label}_{i:03d}.png"
            make_image(root / path, size=32, corner=corner, seed=i if label == "chihuahua" else 1000 + i)
            if i < FLIPS:
                flipped.add(path)
    return flipped


@pytest.mark.slow
def test_kfold_then_labels_find_most_planted_flips(tmp_path):
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset

    data = tmp_path / "data"
    flipped = flipped_dataset(data)
    audit = audit_folder(data, AuditConfig(min_side=16), QUIET)
    split = split_dataset(audit, SplitConfig(test_fraction=0.1, validation_fraction=0.1), seed=0)
    cache = build_cache(audit, data, SIZE, tmp_path / "cache", QUIET)
    run = tmp_path / "run"
    ctx = StageContext("kfold", run / "kfold", run, QUIET)
    ctx.dir.mkdir(parents=True)
    train = TrainConfig(epochs=10, batch_size=8, patience=100, start_from_epoch=100, precision="float32",
                        learning_rate=0.01)
    k = kfold.run_kfold(ctx, cache, split, audit, HYPERPARAMETERS, KFoldConfig(folds=2, epochs=10), train,
                        NO_AUGMENTATION, seed=1)

    # Every train+validation image has one out-of-fold prediction, also in the CSV.
    assert sorted(k.predictions.paths) == sorted(split.train + split.validation)
    assert len(k.fold_of) == len(k.predictions) and set(k.fold_of) == {1, 2}
    table = list(csv.DictReader((run / k.predictions_csv).open()))
    assert [r["path"] for r in table] == k.predictions.paths

    ctx = StageContext("labels", run / "labels", run, QUIET)
    ctx.dir.mkdir(parents=True)
    outcome = labels.check_labels(ctx, cache, split, audit, k, LabelsConfig(), confidence=0.95)
    checked = flipped & set(k.predictions.paths)  # flips that landed in the test split are not checked
    found = {s.path for s in outcome.suspects}
    assert len(checked) >= 4
    assert len(found & checked) / len(checked) >= 0.8  # recall
    assert len(found & checked) / len(found) >= 0.5  # precision
    assert outcome.oof_chance is not None and outcome.oof_chance.better_than_chance
    assert (run / outcome.suspects_figure.path).read_bytes().startswith(b"\x89PNG")
    assert outcome.n_shown == len(outcome.suspects) <= LabelsConfig().shown
