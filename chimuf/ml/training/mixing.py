"""Mixup and CutMix: each training image blended with another of its batch, labels blended alike.

    mixup   x = λ·x_i + (1 − λ)·x_j,                  y = λ·y_i + (1 − λ)·y_j
    CutMix  x = x_i with a box of x_j pasted in,      y = λ'·y_i + (1 − λ')·y_j, λ' = 1 − box area share

λ ~ Beta(α, α) once per batch (as timm draws it), j a permutation of the batch; with both on,
each batch is one or the other, half and half. Like the paper's augmentation (chimuf.ml.training.augment)
every draw comes from TensorFlow's stateless ops keyed on (epoch seed, batch index), so a resumed
training mixes its batches exactly as an unbroken one. Labels become soft (floats in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass(frozen=True)
class Mixing:
    """Beta parameters of mixup and CutMix; 0 switches one off."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @classmethod
    def of(cls, mixup_alpha: float, cutmix_alpha: float) -> Mixing | None:
        """The mixing, or None when both are off (the batches stay as they are)."""
        return cls(mixup_alpha, cutmix_alpha) if mixup_alpha > 0 or cutmix_alpha > 0 else None


def mix_batch(images: tf.Tensor, labels: tf.Tensor, mixup_alpha: float, cutmix_alpha: float,
              seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """images (B, H, W, 3) float32, labels (B,) float32 → the same shapes, mixed; seed (2,) int64."""
    import tensorflow as tf

    parts = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    pick_seed, lam_seed, perm_seed, box_seed = parts
    batch = tf.shape(images)[0]
    partner = tf.argsort(tf.random.stateless_uniform(tf.reshape(batch, [1]), seed=perm_seed))  # (B,)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], seed=pick_seed) < 0.5
        alpha = tf.where(use_cutmix, cutmix_alpha, mixup_alpha)
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
        alpha = tf.constant(cutmix_alpha if cutmix_alpha > 0 else mixup_alpha, tf.float32)
    lam = beta_draw(alpha, lam_seed)
    other_images, other_labels = tf.gather(images, partner), tf.gather(labels, partner)

    def mixup() -> tuple[tf.Tensor, tf.Tensor]:
        return lam * images + (1 - lam) * other_images, lam * labels + (1 - lam) * other_labels

    def cutmix() -> tuple[tf.Tensor, tf.Tensor]:
        mask, kept = box_mask(tf.shape(images)[1], tf.shape(images)[2], lam, box_seed)  # (H, W, 1)
        mixed = images * (1 - mask) + other_images * mask
        return mixed, kept * labels + (1 - kept) * other_labels

    return tf.cond(use_cutmix, cutmix, mixup)


def beta_draw(alpha: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One λ ~ Beta(α, α), as the ratio of two Gamma(α) draws."""
    import tensorflow as tf

    first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    a = tf.random.stateless_gamma([], seed=first, alpha=alpha)
    b = tf.random.stateless_gamma([], seed=second, alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def box_mask(height: tf.Tensor, width: tf.Tensor, lam: tf.Tensor,
             seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A 0/1 mask (H, W, 1) of a box covering about 1 − λ of the image, clipped to it, and the
    share of the image outside the box (the weight of the image's own label)."""
    import tensorflow as tf

    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform([2], seed=seed) * tf.stack([h, w])
    top = tf.clip_by_value(centre[0] - side * h / 2, 0, h)
    bottom = tf.clip_by_value(centre[0] + side * h / 2, 0, h)
    left = tf.clip_by_value(centre[1] - side * w / 2, 0, w)
    right = tf.clip_by_value(centre[1] + side * w / 2, 0, w)
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # (H, W)
    mask = tf.cast(inside, tf.float32)[:, :, None]
    return mask, 1.0 - tf.reduce_mean(mask)
