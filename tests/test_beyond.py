"""Beyond the paper: the modern recipe, mixup/CutMix, ensembles and test-time flips."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig, EvaluateConfig, ModernConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.results import (
    CacheOutcome,
    EvaluateOutcome,
    Figure,
    FoldOutcome,
    Interval,
    KFoldOutcome,
    Predictions,
    SplitOutcome,
    ThresholdMetrics,
    TrainingOutcome,
)
from chimuf.ml.architectures.modern import build_modern, compile_modern
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import averaged_probabilities, probabilities_of
from chimuf.ml.training.mixing import Mixing, box_mask, mix_batch

SIZE = 16
TINY = ModernConfig(widths=(4, 8), epochs=3, warmup_epochs=1, batch_size=4)


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


# --- the modern model --------------------------------------------------------------------------


def test_modern_model_has_named_convolutions_and_loads_in_safe_mode(tmp_path):
    from chimuf.ml.architectures.models import conv_layer_names

    model = build_modern(32, ModernConfig(widths=(8, 16, 32)))
    names = conv_layer_names(model)
    assert names[0] == "stem_conv" and "s3b1_b_conv" in names
    assert model.output_shape == (None, 1) and model.layers[-1].name == "output"
    assert model.get_layer("pool").output.shape[-1] == 32  # global average pooling, no flatten
    path = tmp_path / "modern.keras"
    model.save(path)
    assert modelfile.load_model(path).count_params() == model.count_params()


def test_batch_norm_statistics_settle_within_a_small_folders_few_steps():
    """84 photos at batch 64 for 25 epochs are 50 steps: with Keras' momentum 0.99 the moving
    statistics would still be 60 % their initial values, and every prediction at chance."""
    from chimuf.ml.architectures.modern import bn_momentum, seeded_modern

    assert bn_momentum(0) == 0.99 and bn_momentum(52 * 25) == 0.99  # a full study: unchanged
    assert bn_momentum(50) == pytest.approx(0.9) and bn_momentum(3) == 0.5
    assert bn_momentum(50) ** 50 < 0.01  # what is left of the initial statistics at the end
    model = seeded_modern(SIZE, TINY, "float32", steps_per_epoch=2, seed=0)  # 3 epochs × 2 steps
    momenta = {layer.momentum for layer in model.layers if layer.__class__.__name__ == "FusedBatchNorm"}
    assert momenta == {bn_momentum(6)}


def test_modern_model_refuses_images_too_small_for_its_halvings():
    from chimuf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="too small"):
        build_modern(8, ModernConfig(widths=(8, 16, 32, 64)))


def test_learning_rate_warms_up_then_decays_to_zero_or_stays():
    model = build_modern(SIZE, TINY)
    compile_modern(model, TINY, steps_per_epoch=10)
    rate = model.optimizer._learning_rate  # the schedule, a function of the step
    assert float(rate(0)) == 0.0 and float(rate(10)) == pytest.approx(TINY.learning_rate)
    assert float(rate(29)) < 0.05 * TINY.learning_rate  # cosine to zero at the end
    constant = replace(TINY, schedule="constant")
    compile_modern(model, constant, steps_per_epoch=10)
    assert float(model.optimizer._learning_rate(25)) == pytest.approx(TINY.learning_rate)


# --- mixup and CutMix --------------------------------------------------------------------------


def batch_of(n: int = 8):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (n, SIZE, SIZE, 3)), tf.float32)
    labels = tf.constant([i % 2 for i in range(n)], tf.float32)
    return images, labels


def test_mixup_blends_images_and_labels_with_the_same_weight():
    import tensorflow as tf

    images, labels = batch_of()
    mixed, soft = mix_batch(images, labels, 0.4, 0.0, tf.constant([3, 4], tf.int64))
    x, y, mixed, soft = images.numpy(), labels.numpy(), mixed.numpy(), soft.numpy()
    weights = []
    for i in range(len(x)):
        if np.allclose(mixed[i], x[i], atol=1e-3):  # its partner is itself
            assert soft[i] == pytest.approx(y[i])
            continue
        # mixed[i] = λ·x_i + (1 − λ)·x_j for one partner j: solve λ for each j, keep the exact one
        found = []
        for j in range(len(x)):
            if j == i:
                continue
            lam = np.sum((mixed[i] - x[j]) * (x[i] - x[j])) / np.sum((x[i] - x[j]) ** 2)
            if np.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-2):
                found.append((lam, j))
        (lam, j), = found
        assert soft[i] == pytest.approx(lam * y[i] + (1 - lam) * y[j], abs=1e-4)
        weights.append(lam)
    assert weights, "no image of the batch was mixed"
    assert np.allclose(weights, weights[0], atol=1e-3)  # one λ for the batch


def test_cutmix_weighs_each_label_by_the_area_it_keeps():
    import tensorflow as tf

    seed = tf.constant([1, 2], tf.int64)
    mask, kept = box_mask(tf.constant(SIZE), tf.constant(SIZE), tf.constant(0.75), seed)
    assert float(kept) == pytest.approx(1 - float(tf.reduce_mean(mask)))
    images, labels = batch_of()
    mixed, soft = mix_batch(images, labels, 0.0, 1.0, tf.constant([5, 6], tf.int64))
    assert mixed.shape == images.shape and soft.shape == labels.shape


def test_mixed_batches_are_a_pure_function_of_seed_and_epoch():
    from chimuf.ml.training.pipeline import make_dataset

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (12, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.array([i % 2 for i in range(12)], np.int32)

    def epoch(e: int) -> list[np.ndarray]:
        data = make_dataset(images, labels, np.arange(12), 4, shuffle=True, seed=9, epoch=e,
                            augment=AugmentConfig(), mix=Mixing(0.4, 1.0))
        return [y.numpy() for _, y in data]

    assert all(np.array_equal(a, b) for a, b in zip(epoch(2), epoch(2), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(epoch(2), epoch(3), strict=True))


# --- ensembles and flips -----------------------------------------------------------------------


def tiny_saved(tmp_path: Path, name: str, seed: int) -> Path:
    import keras

    from chimuf.ml.architectures.models import build_model

    keras.utils.set_random_seed(seed)
    path = tmp_path / f"{name}.keras"
    build_model("model1", SIZE).save(path)
    modelfile.write_classes(path, ["a", "b"])
    return path


def test_an_ensemble_with_flips_averages_every_model_over_each_image_and_its_mirror(tmp_path):
    paths = [tiny_saved(tmp_path, f"m{i}", i) for i in range(2)]
    models = [modelfile.load_model(p) for p in paths]
    pixels = np.random.default_rng(2).integers(0, 255, (5, SIZE, SIZE, 3), dtype=np.uint8)
    mirrored = pixels[:, :, ::-1, :]
    expected = np.mean([probabilities_of(m, v) for m in models for v in (pixels, mirrored)], axis=0)
    assert averaged_probabilities(models, pixels, flips=True) == pytest.approx(expected)
    assert averaged_probabilities(models[:1], pixels, flips=False) == pytest.approx(
        probabilities_of(models[0], pixels))


def test_predict_with_ensemble_and_tta_from_the_command_line(tmp_path, capsys):
    from chimuf.cli import main
    from tests.conftest import make_image

    first, second = tiny_saved(tmp_path, "m0", 0), tiny_saved(tmp_path, "m1", 1)
    image = make_image(tmp_path / "photo.png", size=40)
    assert main(["predict", str(first), str(image), "--csv", "--tta", "--ensemble", str(second)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split(",")[1] in ("a", "b")
    assert "threshold 0.5 (the default)" in err


def test_an_ensemble_member_of_another_size_is_refused_in_one_line(tmp_path):
    import keras

    from chimuf.core.errors import ModelError
    from chimuf.ml.architectures.models import build_model
    from chimuf.ml.modelfiles.predictor import load_classifier

    other = tmp_path / "big.keras"
    keras.utils.set_random_seed(0)
    build_model("model1", 2 * SIZE).save(other)
    with pytest.raises(ModelError, match="one size"):
        load_classifier(tiny_saved(tmp_path, "m0", 0), ensemble=[other])


# --- the stages ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path):
    """A cache of 24 corner images, a split, a final model and two fold models."""
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
    run_dir = tmp_path / "run"
    for name, seed in (("final", 0), ("fold1", 1), ("fold2", 2)):
        (run_dir / name).mkdir(parents=True)
        tiny_saved(run_dir / name, name, seed)
    return run_dir, cache, split


def training(name: str, model_path: str) -> TrainingOutcome:
    return TrainingOutcome(name=name, architecture="tuned", augmented=True, params=0, layers=[],
                           epochs_run=1, best_epoch=1, stopped_early=False, best_val_loss=0.0,
                           best_val_accuracy=0.0, history=[], history_csv="", model_path=model_path,
                           figure=None, wall_s=0.0, images_per_s=0.0, precision="float32")


def test_beyond_compares_flips_and_the_fold_ensemble_with_the_final_model(tiny_run):
    from chimuf.stages.beyond import compare_beyond

    run_dir, cache, split = tiny_run
    final = training("final", "final/final.keras")
    model = modelfile.load_model(run_dir / final.model_path)
    test_pixels = np.load(cache.images_path)[20:]
    p = probabilities_of(model, test_pixels)
    nothing, figure = Interval(0.0, 0.0), Figure("x.png", "")
    evaluation = EvaluateOutcome(
        model="final", classes=["a", "b"], n_images=4, accuracy=0.0, accuracy_interval=nothing,
        roc_auc=0.0, roc_auc_interval=nothing, confusion_matrix=[], per_class=[], macro_f1=0.0,
        at_validation_threshold=ThresholdMetrics(0.5, 0.0, [], []), expected_calibration_error=0.0,
        mcnemar=[], leakage_free_accuracy=None, leakage_free_n=0, keras_accuracy=0.0,
        predictions=Predictions(["a", "b"], 0.5, split.test, [0, 1, 0, 1], p.tolist()),
        predictions_csv="", confusion_figure=figure, roc_figure=figure, reliability_figure=figure)
    folds = [FoldOutcome(i, "COMPLETED", 10, 5, 0.5, 0.7, 1, 1.0, model_path=f"fold{i}/fold{i}.keras")
             for i in (1, 2)]
    oof = Predictions(["a", "b"], 0.5, split.train[:4], [0, 1, 0, 1], [0.2, 0.8, 0.6, 0.9])
    kfold = KFoldOutcome(folds, 0.5, 0.0, 0.7, 0.0, None, predictions=oof)
    ctx = StageContext("beyond", run_dir / "beyond", run_dir, quiet())
    ctx.dir.mkdir()
    outcome = compare_beyond(ctx, cache, split, final, evaluation, kfold, None,
                             EvaluateConfig(bootstrap_samples=20), seed=0)
    names = [row.name for row in outcome.rows]
    assert names == ["final", "final + flips", "fold ensemble", "fold ensemble + flips",
                     "fold ensemble + final", "fold ensemble + final + flips"]
    assert outcome.rows[0].vs_final is None and all(r.vs_final is not None for r in outcome.rows[1:])
    assert [r.models for r in outcome.rows] == [1, 1, 2, 2, 3, 3]
    assert outcome.n_images == 4 and outcome.majority_rate == 0.5
    assert all(0 <= r.chance_p_value <= 1 for r in outcome.rows)
    # what the take-home choice reads: validation scores, out-of-fold for the folds, never the test
    sources = [r.validation_source.split(" ")[0] for r in outcome.rows]
    assert sources == ["validation", "validation", "out-of-fold", "out-of-fold", "none", "none"]
    assert [r.validation_n for r in outcome.rows[:4]] == [4, 4, 4, 4]
    assert outcome.rows[2].validation_accuracy == 0.75 and math.isnan(outcome.rows[4].validation_accuracy)
    one = outcome.rows[0].cost
    assert outcome.rows[1].cost == 2 * one and outcome.rows[3].cost == 4 * one
    assert outcome.rows[2].model_paths == ["fold1/fold1.keras", "fold2/fold2.keras"]


@pytest.mark.slow
def test_the_modern_stage_trains_resumably_and_keeps_its_best_epoch(tiny_run):
    from chimuf.stages.train import train_modern

    run_dir, cache, split = tiny_run
    ctx = StageContext("modern", run_dir / "modern", run_dir, quiet())
    ctx.dir.mkdir()
    cfg = replace(TINY, mixup=0.2)
    outcome = train_modern(ctx, cache, split, cfg, TrainConfig(precision="float32"), AugmentConfig(), seed=3)
    assert outcome.architecture == "modern" and outcome.epochs_run == 3 and not outcome.stopped_early
    assert outcome.best_val_loss == min(r.val_loss for r in outcome.history)
    assert (run_dir / outcome.model_path).is_file()
    rates = [r.learning_rate for r in outcome.history]
    assert rates[0] > 0 and rates[-1] < max(rates)  # warmed up, then decaying
    again = train_modern(ctx, cache, split, cfg, TrainConfig(precision="float32"), AugmentConfig(), seed=3)
    assert [r.val_loss for r in again.history] == [r.val_loss for r in outcome.history]  # not retrained


@pytest.mark.slow
def test_the_modern_recipe_trained_on_smaller_images_is_saved_taking_the_studys_side(tiny_run, tmp_path):
    """train_scale < 1: trained on a cache of smaller images, then the same weights in a model of the
    study's side, the file every later stage opens (and trusts by its new digest)."""
    import tensorflow as tf

    from chimuf.stages.train import train_modern

    run_dir, cache, split = tiny_run
    big = np.load(cache.images_path)
    np.save(tmp_path / "small.npy", tf.image.resize(big, (8, 8)).numpy().round().astype(np.uint8))
    smaller = replace(cache, images_path=str(tmp_path / "small.npy"), image_size=8)
    ctx = StageContext("modern", run_dir / "modern", run_dir, quiet())
    ctx.dir.mkdir()
    cfg = replace(TINY, epochs=2, train_scale=0.5)
    assert cfg.train_side(SIZE) == 8 and replace(TINY, train_scale=0.9).train_side(SIZE) == SIZE
    outcome = train_modern(ctx, cache, split, cfg, TrainConfig(precision="float32"), AugmentConfig(), seed=3,
                           smaller=smaller)
    assert outcome.trained_side == 8 and outcome.epochs_run == 2
    path = run_dir / outcome.model_path
    assert outcome.model_sha256 == modelfile.file_sha256(path)
    model = modelfile.load_model(path)
    assert tuple(model.inputs[0].shape[1:]) == (SIZE, SIZE, 3)
    workdir = run_dir / "modern" / "modern"  # the fit loop's checkpoints: the kept epoch's weights
    trained = build_modern(8, cfg, "float32")
    trained.load_weights(workdir / json.loads((workdir / "state.json").read_text())["best_file"])
    for saved, learnt in zip(model.get_weights(), trained.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, learnt)
    assert probabilities_of(model, big[:4]).shape == (4,)


def test_a_train_scale_out_of_range_is_refused():
    from chimuf.core.config import load_config
    from chimuf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="train_scale"):
        load_config(overrides={"modern": {"train_scale": 1.5}})
    assert load_config(profile="fast").modern.train_side(128) == 112
