"""Batch normalisation as one fused TensorFlow kernel, for the modern recipe.

Keras 3's BatchNormalization on the TensorFlow backend is built from separate ops: the bf16 input
is cast to float32, its moments taken, the normalisation applied element by element and the
result cast back; none of oneDNN's fused batch-norm kernels runs, and on a CPU these memory-bound
passes over thin (16-64 channel) activations cost as much as the convolutions. FusedBatchNorm
calls TensorFlow's FusedBatchNormV3 (oneDNN's kernel on a CPU) in training and in inference, on
the layer's compute dtype (bf16 under mixed precision: the statistics are float32 inside it).

Same variables (gamma, beta, moving_mean, moving_variance, all float32) and the same semantics as
Keras' layer with its defaults (last axis, epsilon 1e-3, centre and scale): a training step
normalises with the batch's mean and biased variance and moves the moving statistics by
`momentum` (chimuf.ml.architectures.modern follows the training length), inference uses the moving statistics.
Registered as `chimuf>FusedBatchNorm`, so a saved model loads in Keras' safe mode once this module
is imported (chimuf.ml.modelfiles.modelfile does); its parameters count as a BatchNormalization's.

Measured by `python -m benchmarks.fused_norm` (the README of benchmarks/ has the numbers).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from chimuf.core.errors import ModelError


@keras.saving.register_keras_serializable(package="chimuf")
class FusedBatchNorm(keras.layers.Layer):
    """Batch normalisation over the channels of NHWC images, by TensorFlow's fused kernel."""

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ModelError(f"FusedBatchNorm `{self.name}` normalises images (batch, height, width, "
                             f"channels) with known channels, got shape {input_shape}; use "
                             "keras.layers.BatchNormalization for other inputs")
        channels = (input_shape[-1],)
        # float32 and never cast to the compute dtype: the fused kernel takes them as float32
        self.gamma = self.add_weight(shape=channels, name="gamma", initializer="ones", autocast=False)
        self.beta = self.add_weight(shape=channels, name="beta", initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(shape=channels, name="moving_mean", initializer="zeros",
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(shape=channels, name="moving_variance", initializer="ones",
                                               trainable=False, autocast=False)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if training and self.trainable:
            return self.normalise_batch(inputs)
        # (N, H, W, C) normalised with the moving statistics
        outputs, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma.value, offset=self.beta.value, mean=self.moving_mean.value,
            variance=self.moving_variance.value, epsilon=self.epsilon, data_format="NHWC",
            is_training=False)
        return outputs

    def normalise_batch(self, inputs: tf.Tensor) -> tf.Tensor:
        """Normalise with the batch's statistics and move the moving ones towards them."""
        empty = tf.zeros((0,), tf.float32)  # no running statistics passed in: the kernel's own
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma.value, offset=self.beta.value, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # 1. The kernel returns the unbiased (n - 1) variance; Keras' layer keeps the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)  # N·H·W values per channel
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
        # 2. Keras' update: moving = moving · momentum + batch · (1 − momentum).
        keep = self.momentum
        self.moving_mean.assign(self.moving_mean.value * keep + mean * (1.0 - keep))
        self.moving_variance.assign(self.moving_variance.value * keep + variance * (1.0 - keep))
        return outputs

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
