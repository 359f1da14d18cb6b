"""chimuf's FusedBatchNorm: Keras' semantics, saved and loaded safely, resumed bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig, ModernConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.errors import ModelError
from chimuf.ml.modelfiles import modelfile, modelsize
from chimuf.ml.training import fit as fitting

SIZE = 16
TINY = ModernConfig(widths=(4, 8), epochs=3, warmup_epochs=1, batch_size=8)
CFG = TrainConfig(epochs=3, batch_size=8, patience=3, start_from_epoch=0, precision="float32")


def batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 3.0, (8, 5, 5, 6)).astype("float32")


def pair(momentum: float, dtype: str):
    import keras

    from chimuf.ml.architectures.fusednorm import FusedBatchNorm

    keras_bn = keras.layers.BatchNormalization(momentum=momentum, dtype=dtype)
    return keras_bn, FusedBatchNorm(momentum, dtype=dtype)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 5e-2)])
def test_training_and_inference_match_keras_batch_normalization(dtype, tolerance):
    keras_bn, fused = pair(0.7, dtype)
    for seed in range(3):  # three steps: the moving statistics follow the batches alike
        x = batch(seed)
        expected, got = keras_bn(x, training=True), fused(x, training=True)
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(np.float32(got), np.float32(expected), atol=tolerance)
    # the biased batch variance, moved by the momentum, as Keras keeps it
    np.testing.assert_allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), keras_bn.moving_variance.numpy(), rtol=1e-5)
    x = batch(9)
    np.testing.assert_allclose(np.float32(fused(x, training=False)), np.float32(keras_bn(x, training=False)),
                               atol=tolerance)


def test_gradients_match_keras_batch_normalization():
    import tensorflow as tf

    keras_bn, fused = pair(0.9, "float32")
    x = tf.constant(batch())
    grads = []
    for layer in (keras_bn, fused):
        layer.build(x.shape)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x, training=True)))
        grads.append(tape.gradient(loss, [x, *layer.trainable_variables]))
    for expected, got in zip(*grads, strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_a_frozen_layer_normalises_with_its_moving_statistics():
    _, fused = pair(0.5, "float32")
    fused.build((None, 5, 5, 6))
    fused.trainable = False
    before = fused.moving_mean.numpy().copy()
    out = fused(batch(), training=True)
    np.testing.assert_allclose(out.numpy(), batch() / np.sqrt(1 + 1e-3), rtol=1e-5)  # mean 0, var 1
    assert np.array_equal(fused.moving_mean.numpy(), before)


def test_inputs_other_than_images_are_refused_with_the_alternative():
    _, fused = pair(0.9, "float32")
    with pytest.raises(ModelError, match="BatchNormalization for other inputs"):
        fused.build((None, 6))


def test_modern_model_with_it_saves_loads_safely_and_is_counted(tmp_path):
    from chimuf.ml.architectures.modern import build_modern

    model = build_modern(SIZE, TINY)
    assert {type(layer).__name__ for layer in model.layers} >= {"FusedBatchNorm"}
    assert "BatchNormalization" not in {type(layer).__name__ for layer in model.layers}
    path = tmp_path / "modern.keras"
    model.save(path)
    loaded = modelfile.load_model(path)
    assert loaded.count_params() == model.count_params()
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    import json

    config = json.loads(model.to_json())  # what config.json holds
    assert modelsize.estimate(config).params == model.count_params()


def test_keras_and_fused_modern_models_have_the_same_variables():
    from chimuf.ml.architectures.modern import build_modern

    fused, plain = build_modern(SIZE, TINY), build_modern(SIZE, TINY, fused_norm=False)
    shapes = [(v.path.split("/")[-1], tuple(v.shape), v.trainable) for v in fused.weights]
    assert shapes == [(v.path.split("/")[-1], tuple(v.shape), v.trainable) for v in plain.weights]


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, SIZE, SIZE, 3), dtype=np.uint8)
    y = (np.arange(40) % 2).astype(np.int32)
    x[y == 1, :5, :5] = 255
    return (x[:32], y[:32]), (x[32:], y[32:])


def modern_model():
    from chimuf.ml.architectures.modern import seeded_modern

    return seeded_modern(SIZE, TINY, "float32", steps_per_epoch=4, seed=5)


def test_resume_after_kill_gives_the_same_weights_and_statistics(monkeypatch, tmp_path):
    from chimuf.core.results import EpochRecord

    train, validation = data()
    straight = modern_model()
    fitting.fit(straight, train, validation, CFG, AugmentConfig(), 7, tmp_path / "straight",
                Console(io.StringIO(), live=False), "m")

    def killed_in_epoch_3(record: EpochRecord, name: str) -> None:
        if record.epoch == 3:
            raise KeyboardInterrupt  # epoch 3 trained, its checkpoint never written

    with monkeypatch.context() as patch:
        patch.setattr(fitting, "check_finite", killed_in_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            fitting.fit(modern_model(), train, validation, CFG, AugmentConfig(), 7, tmp_path / "resumed",
                        Console(io.StringIO(), live=False), "m")
    resumed = modern_model()
    console = Console(io.StringIO(), live=False)
    fitting.fit(resumed, train, validation, CFG, AugmentConfig(), 7, tmp_path / "resumed", console, "m")
    assert "resuming after epoch 2" in console.stream.getvalue()
    names = [v.path for v in straight.weights]
    assert any("moving_variance" in n for n in names)
    for name, a, b in zip(names, straight.get_weights(), resumed.get_weights(), strict=True):
        assert np.array_equal(a, b), name


def test_momentum_follows_the_training_length():
    from chimuf.ml.architectures.modern import bn_momentum

    model = modern_model()
    momenta = {layer.momentum for layer in model.layers if type(layer).__name__ == "FusedBatchNorm"}
    assert momenta == {bn_momentum(TINY.epochs * 4)}
