"""k-fold cross-validation: the folds, resuming finished folds, and a failing fold."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.config import AuditConfig, AugmentConfig, KFoldConfig, SplitConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import StageError
from chimuf.core.results import AuditOutcome, DuplicateGroup, FileRecord, SplitOutcome
from chimuf.ml.training import fit as train  # the fit loop the folds train through
from chimuf.stages import kfold
from chimuf.stats.intervals import wilson
from tests.conftest import make_dataset

SIZE = 16
HYPERPARAMETERS = {"conv1_filters": 2, "conv2_filters": 4, "conv3_filters": 4, "dense_units": 4,
                   "dropout_conv": 0.1, "dropout_dense": 0.1}
TRAIN = TrainConfig(workers=1, epochs=1, batch_size=8, patience=1, start_from_epoch=0, precision="float32")


def record(path: str) -> FileRecord:
    return FileRecord(path=path, label=path.split("/")[0], verdict="usable", reason="", size_bytes=1)


def synthetic_split() -> tuple[SplitOutcome, AuditOutcome]:
    """40 files per class; two near-duplicate groups inside train+validation, one reaching test."""
    paths = [f"{c}/{i:02d}.png" for c in ("a", "b") for i in range(40)]
    test = [p for p in paths if p.endswith(("00.png", "01.png", "02.png", "03.png"))]
    rest = [p for p in paths if p not in test]
    groups = [["a/10.png", "a/11.png", "a/12.png"], ["b/20.png", "b/21.png"]]
    split = SplitOutcome(classes=["a", "b"], train=rest[::2] + rest[1::4], validation=rest[3::4],
                         test=test, counts=[], groups=groups, digest="")
    split.train = sorted(set(split.train) - set(split.validation))
    audit = AuditOutcome(data_dir="", classes=["a", "b"], files=[record(p) for p in paths], counts=[],
                         skipped=[], digest="", duplicate_groups=[
                             DuplicateGroup("near", ["a/30.png", "a/31.png", "a/00.png"], ["a"] * 3, False)])
    return split, audit


def test_folds_are_disjoint_cover_train_and_validation_keep_groups_and_leave_test_alone():
    split, audit = synthetic_split()
    folds = kfold.make_folds(split, audit, folds=5, seed=3)
    every = [p for fold in folds for p in fold]
    assert len(every) == len(set(every))  # disjoint
    assert set(every) == set(split.train) | set(split.validation)  # covering train+validation
    assert not set(every) & set(split.test)  # test untouched
    for group in [*split.groups, ["a/30.png", "a/31.png"]]:
        assert len({i for i, fold in enumerate(folds) if set(group) & set(fold)}) == 1, group
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 4  # about equal, groups make them uneven
    for fold in folds:  # stratified: both classes in every fold
        assert {p[0] for p in fold} == {"a", "b"}


def test_folds_depend_on_the_seed_only():
    split, audit = synthetic_split()
    assert kfold.make_folds(split, audit, 3, seed=1) == kfold.make_folds(split, audit, 3, seed=1)


def test_sample_std_is_undefined_for_one_fold():
    assert kfold.sample_std(np.array([0.8, 0.9])) == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert np.isnan(kfold.sample_std(np.array([0.8])))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset

    root = tmp_path_factory.mktemp("kfold")
    data = make_dataset(root / "data", per_class=10)
    quiet = Console(stream=io.StringIO(), live=False)
    audit = audit_folder(data, AuditConfig(), quiet)
    split = split_dataset(audit, SplitConfig(), seed=0)
    cache = build_cache(audit, data, SIZE, root / "cache", quiet)
    return cache, split, audit


def context(run_dir: Path) -> tuple[StageContext, io.StringIO]:
    stream = io.StringIO()
    ctx = StageContext("kfold", run_dir / "kfold", run_dir, Console(stream=stream, live=False))
    ctx.dir.mkdir(parents=True, exist_ok=True)
    return ctx, stream


def cross_validate(ctx: StageContext, tiny_study):
    cache, split, audit = tiny_study
    return kfold.run_kfold(ctx, cache, split, audit, HYPERPARAMETERS, KFoldConfig(folds=2, epochs=1), TRAIN,
                           AugmentConfig(), seed=4)


def test_each_fold_is_trained_scored_and_drawn_and_a_rerun_reuses_them(tiny_study, tmp_path, monkeypatch):
    ctx, _ = context(tmp_path / "run")
    outcome = cross_validate(ctx, tiny_study)
    _cache, split, _audit = tiny_study
    assert [f.status for f in outcome.folds] == ["COMPLETED", "COMPLETED"]
    assert sum(f.n_validation for f in outcome.folds) == len(split.train) + len(split.validation)
    for fold in outcome.folds:
        assert fold.n_train + fold.n_validation == len(split.train) + len(split.validation)
        assert fold.epochs_run == len(fold.history) == 1
        assert 0 <= fold.accuracy <= 1 and fold.loss > 0
    assert outcome.mean_accuracy == pytest.approx(np.mean([f.accuracy for f in outcome.folds]))
    assert (ctx.run_dir / outcome.figure.path).read_bytes().startswith(b"\x89PNG")
    # every train+validation image once, scored by the fold that held it out
    assert outcome.predictions.paths == sorted(split.train + split.validation)
    assert sorted(outcome.fold_of) == sorted([1] * outcome.folds[0].n_validation +
                                             [2] * outcome.folds[1].n_validation)
    for fold in outcome.folds:
        held = [i for i, f in enumerate(outcome.fold_of) if f == fold.fold]
        right = np.mean([item.right for item in np.array(outcome.predictions.items())[held]])
        assert right == pytest.approx(fold.accuracy, abs=1e-6)  # the same weights as evaluate()
    pooled = sum(item.right for item in outcome.predictions.items())
    assert outcome.oof_accuracy == pytest.approx(pooled / len(outcome.predictions))
    assert outcome.oof_accuracy_interval == wilson(pooled, len(outcome.predictions), 0.95)
    rows = (ctx.run_dir / outcome.predictions_csv).read_text().splitlines()
    assert rows[0] == "path,given_label,fold,probability,probability_given"
    assert len(rows) == 1 + len(outcome.predictions)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(train, "fit", no_training)
    again, stream = context(tmp_path / "run")
    reused = cross_validate(again, tiny_study)
    assert reused.folds == outcome.folds and reused.predictions == outcome.predictions
    assert stream.getvalue().count("already done, reused") == 2


def test_a_failed_fold_is_recorded_and_the_others_go_on(tiny_study, tmp_path, monkeypatch):
    real_fit = train.fit

    def diverge_on_fold_1(model, train_data, validation, cfg, augment, seed, workdir, console, name,
                          **options):
        if name == "fold1":
            raise StageError("fold1 diverged at epoch 1: loss nan, pretend")
        return real_fit(model, train_data, validation, cfg, augment, seed, workdir, console, name,
                        **options)

    monkeypatch.setattr(train, "fit", diverge_on_fold_1)
    ctx, stream = context(tmp_path / "run")
    outcome = cross_validate(ctx, tiny_study)
    assert [f.status for f in outcome.folds] == ["FAILED", "COMPLETED"]
    assert "diverged" in outcome.folds[0].error
    assert outcome.mean_accuracy == outcome.folds[1].accuracy
    assert np.isnan(outcome.std_accuracy)
    assert "fold 1 failed" in stream.getvalue()
    assert not (ctx.dir / "units" / "fold1.json").exists()  # a rerun tries it again


def test_every_fold_failing_stops_the_stage(tiny_study, tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise StageError("diverged, pretend")

    monkeypatch.setattr(train, "fit", diverge)
    ctx, _ = context(tmp_path / "run")
    with pytest.raises(StageError, match="every one of the 2 folds failed"):
        cross_validate(ctx, tiny_study)


@pytest.mark.slow
def test_without_early_stopping_every_fold_trains_the_final_models_epochs(tiny_study, tmp_path):
    cache, split, audit = tiny_study
    # A learning rate of 0 keeps val_loss the same each epoch: early stopping would stop at epoch 2.
    eager = replace(TRAIN, epochs=6, patience=0, start_from_epoch=0, learning_rate=0.0)
    ctx, _ = context(tmp_path / "fixed")
    fixed = kfold.run_kfold(ctx, cache, split, audit, HYPERPARAMETERS, KFoldConfig(folds=2), eager,
                            AugmentConfig(), seed=4, final_epoch=3)
    assert [f.epochs_run for f in fixed.folds] == [3, 3] and not fixed.early_stopping and fixed.epochs == 3
    ctx, _ = context(tmp_path / "paper")
    paper = kfold.run_kfold(ctx, cache, split, audit, HYPERPARAMETERS,
                            KFoldConfig(folds=2, early_stopping=True), eager, AugmentConfig(), seed=4,
                            final_epoch=3)
    assert [f.epochs_run for f in paper.folds] == [2, 2] and paper.early_stopping  # stopped on its fold
    assert all((ctx.run_dir / f.model_path).is_file() for f in paper.folds)  # the ensemble members
