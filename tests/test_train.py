"""The fit loop (early stopping, checkpoints, resume) and the training stages, on tiny models."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimuf.core.config import AugmentConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import StageError
from chimuf.core.results import CacheOutcome, EpochRecord, SplitOutcome
from chimuf.ml.training import fit as fitting
from chimuf.ml.training.fit import Stopping, StopState, fit, watch
from chimuf.stages import train

SIZE = 16
TINY = {"conv1_filters": 4, "conv2_filters": 4, "conv3_filters": 8, "dense_units": 8,
        "dropout_conv": 0.25, "dropout_dense": 0.3}
CFG = TrainConfig(workers=1, epochs=3, batch_size=8, learning_rate=1e-2, patience=10, start_from_epoch=0,
                  precision="float32")


def quiet() -> Console:
    return Console(io.StringIO(), live=False)


def console_text(console: Console) -> str:
    return console.stream.getvalue()


def tiny_model(seed: int = 3):
    """A compiled tuned-family model of 16 px with dropout: randomness in every part of a step."""
    import keras

    from chimuf.ml.architectures.models import build_model, compile_model

    keras.utils.set_random_seed(seed)
    model = build_model("tuned", SIZE, TINY)
    compile_model(model, CFG.learning_rate)
    return model


@pytest.fixture(scope="module")
def data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8)
    y = (np.arange(40) % 2).astype(np.int32)
    x[y == 1, :5, :5] = 255  # a class signal to learn
    return (x[:32], y[:32]), (x[32:], y[32:])


def weights_equal(a, b) -> bool:
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights(), strict=True))


def losses(history: list[EpochRecord]) -> list[tuple[float, ...]]:
    return [(r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy) for r in history]


# --- early stopping ----------------------------------------------------------------------------


def run_watch(val_losses: list[float], patience: int, start: int) -> StopState:
    state = StopState()
    for epoch, loss in enumerate(val_losses, start=1):
        state = watch(state, epoch, loss, Stopping.early(patience, start))
        if state.stopped:
            return replace(state, wait=epoch)  # wait reused to carry the stop epoch
    return replace(state, wait=0)


def test_early_stopping_never_stops_before_start_from_epoch():
    state = run_watch([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], patience=1, start=4)
    assert state.stopped and state.wait == 6  # epochs 1-4 unwatched, 5 is the first best, 6 stops
    assert state.best_epoch == 5


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    state = run_watch([0.9, 0.5, 0.6, 0.55, 0.7, 0.4], patience=3, start=0)
    assert state.stopped and state.wait == 5 and state.best_epoch == 2


def test_an_equal_val_loss_is_not_an_improvement():
    state = run_watch([0.5, 0.5, 0.5], patience=2, start=0)
    assert state.stopped and state.best_epoch == 1


@settings(max_examples=25, deadline=None)
@given(
    val_losses=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.4, 0.5]), min_size=1, max_size=12),
    patience=st.integers(0, 4),
    start=st.integers(0, 5),
)
def test_early_stopping_agrees_with_keras(val_losses, patience, start):
    import keras

    callback = keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience,
                                             start_from_epoch=start)
    callback.set_model(SimpleNamespace(stop_training=False))
    callback.on_train_begin()
    keras_stop = 0
    for index, loss in enumerate(val_losses):
        callback.on_epoch_end(index, {"val_loss": loss})
        if callback.model.stop_training:
            keras_stop = index + 1
            break
    ours = run_watch(val_losses, patience, start)
    assert (ours.wait if ours.stopped else 0) == keras_stop
    if ours.best_epoch:
        assert ours.best_epoch == callback.best_epoch + 1


# --- the fit loop, with scripted epochs --------------------------------------------------------


def scripted(monkeypatch, val_losses: list[float]) -> list[int]:
    """Replace the training pass: epoch e reports val_losses[e-1] and marks the weights with e."""
    ran: list[int] = []

    def run_epoch(model, train_data, validation, cfg, augment, validation_augment, seed, epoch, *rest):
        ran.append(epoch)
        model.optimizer.build(model.trainable_variables)  # as a real training step would
        model.get_layer("output").bias.assign([float(epoch)])
        loss = val_losses[epoch - 1]
        return EpochRecord(epoch, loss, 0.5, loss, 0.5), 0.01

    monkeypatch.setattr(fitting, "run_epoch", run_epoch)
    return ran


def output_bias(model) -> float:
    return float(model.get_layer("output").bias.numpy()[0])


def test_fit_stops_early_and_keeps_the_best_epochs_weights(monkeypatch, tmp_path, data):
    ran = scripted(monkeypatch, [0.9, 0.5, 0.6, 0.7, 0.8, 0.9])
    model = tiny_model()
    result = fit(model, *data, replace(CFG, epochs=6, patience=2, start_from_epoch=1), None, 1,
                 tmp_path, quiet(), "t")
    assert ran == [1, 2, 3, 4]
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (4, 2, True)
    assert output_bias(model) == 2.0


def test_fit_keeps_the_last_weights_when_no_epoch_was_watched(monkeypatch, tmp_path, data):
    scripted(monkeypatch, [0.9, 0.5, 0.6])
    model = tiny_model()
    result = fit(model, *data, replace(CFG, start_from_epoch=5), None, 1, tmp_path, quiet(), "t")
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (3, 3, False)
    assert output_bias(model) == 3.0


def test_a_finished_fit_is_not_run_again_but_can_be_extended(monkeypatch, tmp_path, data):
    ran = scripted(monkeypatch, [0.9, 0.8, 0.7, 0.6, 0.5])
    fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t", max_epochs=2)
    again = fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t", max_epochs=2)
    longer = fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t", max_epochs=4)
    assert ran == [1, 2, 3, 4]
    assert again.epochs_run == 2 and longer.epochs_run == 4
    assert [r.epoch for r in longer.history] == [1, 2, 3, 4]


def test_checkpoint_of_other_settings_is_not_resumed(monkeypatch, tmp_path, data):
    ran = scripted(monkeypatch, [0.9, 0.8, 0.7])
    fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t", max_epochs=2)
    console = quiet()
    fit(tiny_model(), *data, CFG, None, 2, tmp_path, console, "t", max_epochs=2)
    assert ran == [1, 2, 1, 2]
    assert "made with other settings; starting over" in console_text(console)


def test_only_the_latest_checkpoint_and_best_weights_are_kept(monkeypatch, tmp_path, data):
    scripted(monkeypatch, [0.5, 0.9, 0.8])
    fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-epoch-001.weights.h5", "epoch-003.keras", "state.json"
    ]


def test_a_diverged_training_stops_with_an_error(monkeypatch, tmp_path, data):
    scripted(monkeypatch, [0.9, math.nan])
    with pytest.raises(StageError, match="diverged at epoch 2"):
        fit(tiny_model(), *data, CFG, None, 1, tmp_path, quiet(), "t")


def test_empty_validation_data_is_refused(tmp_path, data):
    empty = (data[1][0][:0], data[1][1][:0])
    with pytest.raises(StageError, match="validation data is empty"):
        fit(tiny_model(), data[0], empty, CFG, None, 1, tmp_path, quiet(), "t")


# --- the fit loop, really training -------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    model = tiny_model()
    result = fit(model, *data, CFG, AugmentConfig(), 7, tmp_path_factory.mktemp("straight"), quiet(), "t")
    return model, result


def test_resume_after_kill_continues_at_next_epoch_with_the_same_weights(monkeypatch, tmp_path, data,
                                                                         uninterrupted):
    straight_model, straight = uninterrupted

    def killed_in_epoch_3(record: EpochRecord, name: str) -> None:
        if record.epoch == 3:
            raise KeyboardInterrupt  # epoch 3 trained, its checkpoint never written

    with monkeypatch.context() as patch:
        patch.setattr(fitting, "check_finite", killed_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_model(), *data, CFG, AugmentConfig(), 7, tmp_path, quiet(), "t")

    console = quiet()
    model = tiny_model()
    resumed = fit(model, *data, CFG, AugmentConfig(), 7, tmp_path, console, "t")
    assert "resuming after epoch 2" in console_text(console)
    assert "t epoch 1/3" not in console_text(console)
    assert losses(resumed.history) == losses(straight.history)
    assert weights_equal(model, straight_model)
    assert resumed.best_epoch == straight.best_epoch


def test_fit_reports_throughput_and_precision(uninterrupted):
    _, result = uninterrupted
    assert result.images_per_s > 0 and result.wall_s > 0
    assert result.precision == "float32"
    assert result.epochs_run == 3 and [r.epoch for r in result.history] == [1, 2, 3]


@pytest.mark.parametrize("switch", [False, True])
def test_validation_data_is_augmented_only_when_switched_on(monkeypatch, tmp_path, data, switch):
    seen: list[tuple[bool, AugmentConfig | None]] = []
    real = fitting.make_dataset

    def recording(*args, shuffle, augment=None, **kwargs):
        seen.append((shuffle, augment))
        return real(*args, shuffle=shuffle, augment=augment, **kwargs)

    monkeypatch.setattr(fitting, "make_dataset", recording)
    augment = AugmentConfig(augment_validation=switch)
    fit(tiny_model(), *data, CFG, augment, 1, tmp_path, quiet(), "t", max_epochs=1)
    assert seen == [(True, augment), (False, augment if switch else None)]


# --- the stages --------------------------------------------------------------------------------


@pytest.fixture
def stage_inputs(tmp_path) -> tuple[CacheOutcome, SplitOutcome]:
    """A cache of 24 tiny images (bright corner = class) and a split of it, as the stages make them."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 90, (24, SIZE, SIZE, 3), dtype=np.uint8)
    labels = [i % 2 for i in range(24)]
    for i, label in enumerate(labels):
        images[i, :5, :5] = 230 if label == 0 else 0
        images[i, -5:, -5:] = 230 if label == 1 else 0
    np.save(tmp_path / "images.npy", images)
    paths = [f"{'ab'[label]}/{i:02d}.png" for i, label in enumerate(labels)]
    cache = CacheOutcome(str(tmp_path / "images.npy"), paths, labels, SIZE, "d")
    split = SplitOutcome(["a", "b"], train=paths[:16], validation=paths[16:20], test=paths[20:],
                         counts=[], groups=[], digest="s")
    return cache, split


def stage_context(run_dir: Path, name: str = "train") -> StageContext:
    return StageContext(name, run_dir / name, run_dir, quiet())


def test_run_trainings_trains_each_model_without_and_with_augmentation(tmp_path, stage_inputs):
    cache, split = stage_inputs
    cfg = replace(CFG, models=(1,), epochs=1)
    outcome = train.run_trainings(stage_context(tmp_path / "run"), cache, split, cfg, AugmentConfig(), 5)
    assert [(t.name, t.architecture, t.augmented) for t in outcome.trainings] == [
        ("model1", "model1", False), ("model1_aug", "model1", True)
    ]
    run_dir = tmp_path / "run"
    for t in outcome.trainings:
        assert (run_dir / t.model_path).is_file() and t.model_path == f"train/{t.name}.keras"
        assert (run_dir / t.history_csv).read_text().startswith("epoch,loss,accuracy")
        assert (run_dir / t.figure.path).is_file()
        assert (run_dir / f"train/{t.name}.classes.json").is_file()
        assert t.params == sum(row.params for row in t.layers)
        assert len(t.history) == t.epochs_run == 1
    assert [(run_dir / f.path).is_file() for f in outcome.comparison_figures] == [True]


def test_run_trainings_skips_finished_units_on_rerun(monkeypatch, tmp_path, stage_inputs):
    cache, split = stage_inputs
    cfg = replace(CFG, models=(2,), epochs=1)
    first = train.run_trainings(stage_context(tmp_path / "run"), cache, split, cfg, AugmentConfig(), 5)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished training was run again")

    monkeypatch.setattr(train, "train_one", must_not_train)
    context = stage_context(tmp_path / "run")
    again = train.run_trainings(context, cache, split, cfg, AugmentConfig(), 5)
    assert again.trainings == first.trainings
    assert console_text(context.console).count("already done, reused") == 2


def test_train_final_trains_the_tuned_family_with_augmentation(tmp_path, stage_inputs):
    cache, split = stage_inputs
    ctx = stage_context(tmp_path / "run", "final")
    outcome = train.train_final(ctx, cache, split, TINY, replace(CFG, epochs=1), AugmentConfig(), 5)
    assert (outcome.name, outcome.architecture, outcome.augmented) == ("final", "tuned", True)
    assert outcome.hyperparameters == TINY
    assert outcome.model_path == "final/final.keras"
    assert [row.name for row in outcome.layers if row.kind == "Conv2D"] == ["conv1", "conv2", "conv3"]
