"""Augmentation (paper 3.2): each transformation does what its name says, and draws are seeded."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig
from chimuf.ml.training.augment import affine_transforms, augment_batch, channel_shift, is_identity

NOTHING = AugmentConfig(rotation_range=0, width_shift_range=0, height_shift_range=0, shear_range=0,
                        zoom_range=0, channel_shift_range=0, horizontal_flip=False)


def images(n: int = 2, size: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def transform(batch: np.ndarray, **params: float) -> np.ndarray:
    """Apply one explicit affine map (same for every image) the way augment_batch does."""
    import keras
    import tensorflow as tf

    values = {"angle": 0.0, "shift_x": 0.0, "shift_y": 0.0, "shear": 0.0, "zoom_x": 1.0, "zoom_y": 1.0,
              "flip": 1.0, **params}
    n, height, width = batch.shape[:3]
    args = [tf.fill([n], float(values[k])) for k in
            ("angle", "shift_x", "shift_y", "shear", "zoom_x", "zoom_y", "flip")]
    matrices = affine_transforms(*args, height, width)
    return keras.ops.image.affine_transform(tf.constant(batch), matrices, interpolation="bilinear",
                                            fill_mode="nearest").numpy()


def seed(a: int, b: int):
    import tensorflow as tf

    return tf.constant([a, b], tf.int64)


def test_identity_parameters_leave_images_unchanged():
    batch = images()
    np.testing.assert_array_equal(transform(batch), batch)


def test_flip_mirrors_left_right():
    batch = images()
    np.testing.assert_array_equal(transform(batch, flip=-1), batch[:, :, ::-1])


def test_positive_angle_turns_counter_clockwise_like_keras():
    batch = images()
    np.testing.assert_allclose(transform(batch, angle=math.pi / 2), np.rot90(batch, 1, axes=(1, 2)),
                               atol=1e-3)


def test_shift_moves_the_picture_and_fills_with_the_nearest_edge():
    batch = images()
    shifted = transform(batch, shift_x=2, shift_y=1)
    np.testing.assert_array_equal(shifted[:, 1:, 2:], batch[:, :-1, :-2])
    np.testing.assert_array_equal(shifted[:, 1:, 0], batch[:, :-1, 0])  # nearest fill on the left
    np.testing.assert_array_equal(shifted[:, 0, 2:], batch[:, 0, :-2])  # and at the top


def test_zoom_above_one_shows_the_picture_smaller():
    batch = np.zeros((1, 9, 9, 3), "float32")
    batch[:, 2:7, 2:7] = 255  # a 5-pixel square in the middle
    smaller = transform(batch, zoom_x=2, zoom_y=2)
    assert (smaller > 127).sum() < (batch > 127).sum()
    assert smaller[0, 4, 4, 0] == 255  # the centre stays put


def test_channel_shift_adds_one_offset_per_image_and_channel_within_range():
    batch = np.full((3, 5, 5, 3), 100.0, "float32")
    shifted = channel_shift(batch, 20.0, seed(1, 2)).numpy()
    offsets = shifted - batch
    assert np.all(np.abs(offsets) <= 20)
    np.testing.assert_array_equal(offsets, np.broadcast_to(offsets[:, :1, :1, :], offsets.shape))
    assert len(np.unique(offsets[:, 0, 0, :])) == 9


def test_channel_shift_stays_within_0_and_255():
    batch = np.concatenate([np.zeros((2, 4, 4, 3)), np.full((2, 4, 4, 3), 255.0)]).astype("float32")
    shifted = channel_shift(batch, 200.0, seed(3, 4)).numpy()
    assert shifted.min() >= 0 and shifted.max() <= 255


def test_same_seed_gives_the_same_augmentation_and_another_seed_another():
    batch, cfg = images(4, 16), AugmentConfig()
    first = augment_batch(batch, cfg, seed(5, 0)).numpy()
    np.testing.assert_array_equal(augment_batch(batch, cfg, seed(5, 0)).numpy(), first)
    assert not np.array_equal(augment_batch(batch, cfg, seed(5, 1)).numpy(), first)


def test_augmented_images_keep_shape_and_pixel_range():
    batch = images(4, 16)
    out = augment_batch(batch, AugmentConfig(channel_shift_range=100.0), seed(1, 1)).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


def test_all_ranges_zero_is_the_identity():
    batch = images(2, 16)
    assert is_identity(NOTHING) and not is_identity(AugmentConfig())
    np.testing.assert_array_equal(augment_batch(batch, NOTHING, seed(1, 1)).numpy(), batch)


@pytest.mark.parametrize("field", ["rotation_range", "width_shift_range", "shear_range", "zoom_range"])
def test_each_geometric_range_alone_changes_the_images(field):
    batch = images(4, 16)
    cfg = replace(NOTHING, **{field: 0.3 if field != "rotation_range" else 30.0})
    assert not is_identity(cfg)
    assert not np.array_equal(augment_batch(batch, cfg, seed(2, 2)).numpy(), batch)


def test_flip_alone_mirrors_some_images_and_keeps_the_others():
    batch = images(16, 8)
    out = augment_batch(batch, replace(NOTHING, horizontal_flip=True), seed(7, 0)).numpy()
    mirrored = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out, batch, strict=True)]
    kept = [np.array_equal(o, b) for o, b in zip(out, batch, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)
