"""`train.class_weight = "balanced"`: each class weighs the same in the training loss, however
imbalanced the training split; "none" (the paper's) leaves the loss as it was."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chimuf.core.config import TrainConfig
from chimuf.core.console import Console
from chimuf.core.errors import ConfigError
from chimuf.ml.training import fit as fitting

SIZE = 4


def fixed_model():
    """A logistic regression on the mean pixel, with fixed weights and a learning rate of 0, so
    the loss Keras reports for the epoch is the loss of these very weights."""
    import keras

    from chimuf.ml.architectures.models import compile_model

    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    output = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(3.0),
                                bias_initializer=keras.initializers.Constant(-1.0))(pooled)
    model = keras.Model(inputs, output)
    compile_model(model, learning_rate=0.0)
    return model


def imbalanced() -> tuple[np.ndarray, np.ndarray]:
    """12 images, 9 of class 0 and 3 of class 1, of different brightness."""
    labels = np.array([0] * 9 + [1] * 3)
    brightness = np.linspace(20, 240, 12).astype(np.uint8)
    images = np.broadcast_to(brightness[:, None, None, None], (12, SIZE, SIZE, 3)).copy()
    return images, labels


def epoch_loss(rule: str) -> float:
    images, labels = imbalanced()
    cfg = TrainConfig(batch_size=12, precision="float32", class_weight=rule)
    record, _ = fitting.run_epoch(fixed_model(), (images, labels), (images, labels), cfg, None, None,
                                  seed=0, epoch=1, max_epochs=1, console=Console(io.StringIO(), live=False),
                                  name="tiny")
    return record.loss


def per_image_loss() -> np.ndarray:
    images, labels = imbalanced()
    p = 1 / (1 + np.exp(-(3 * 3.0 * images[:, 0, 0, 0] / 255 - 1.0)))  # 3 channels × weight 3
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))  # (12,) binary cross-entropy


def test_balanced_class_weights_weigh_each_class_equally_in_the_training_loss():
    losses = per_image_loss()
    labels = imbalanced()[1]
    weights = np.where(labels == 1, 12 / (2 * 3), 12 / (2 * 9))  # n / (2 · n_class): 2.0 and 0.667
    assert epoch_loss("none") == pytest.approx(losses.mean(), rel=1e-4)
    assert epoch_loss("balanced") == pytest.approx((weights * losses).mean(), rel=1e-4)
    assert epoch_loss("balanced") != pytest.approx(epoch_loss("none"), rel=1e-2)


def test_class_weights_come_from_the_training_labels():
    assert fitting.class_weights(np.array([0] * 9 + [1] * 3), "none") is None
    assert fitting.class_weights(np.array([0] * 9 + [1] * 3), "balanced") == pytest.approx({0: 2 / 3, 1: 2.0})
    assert fitting.class_weights(np.array([0, 1, 0, 1]), "balanced") == {0: 1.0, 1: 1.0}
    with pytest.raises(ConfigError, match=r"train\.class_weight"):
        fitting.class_weights(np.array([0, 1]), "inverse")


def test_class_weight_none_keeps_the_checkpoint_fingerprint_of_older_runs():
    model = fixed_model()

    def of(cfg: TrainConfig) -> str:
        return fitting.fingerprint(model, cfg, None, 0, 12, 12, fitting.Stopping.of(cfg))

    assert of(TrainConfig()) == of(TrainConfig(class_weight="none"))
    assert of(TrainConfig()) != of(TrainConfig(class_weight="balanced"))
