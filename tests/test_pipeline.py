"""Input pipelines: rows of the image cache in a seeded order, augmented as a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig
from chimuf.ml.training.pipeline import derive_seed, epoch_order, make_dataset


@pytest.fixture
def cache(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """A memory-mapped uint8 cache of 20 images of 16 px, as the cache stage writes it."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    return np.load(tmp_path / "images.npy", mmap_mode="r"), np.arange(20) % 2


def collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_unshuffled_dataset_serves_the_rows_in_the_given_order_as_float_pixels(cache):
    images, labels = cache
    rows = np.array([5, 2, 17, 0, 9])
    x, y = collect(make_dataset(images, labels, rows, 2, shuffle=False, seed=1))
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, images[rows].astype("float32"))
    np.testing.assert_array_equal(y, labels[rows])


def test_batches_have_the_batch_size_and_the_last_one_the_rest(cache):
    images, labels = cache
    sizes = [x.shape[0] for x, _ in make_dataset(images, labels, np.arange(20), 8, shuffle=True, seed=1)]
    assert sizes == [8, 8, 4]


def test_shuffle_order_is_a_function_of_seed_and_epoch(cache):
    rows = np.arange(20)
    first = epoch_order(rows, True, seed=3, epoch=1)
    np.testing.assert_array_equal(epoch_order(rows, True, seed=3, epoch=1), first)
    assert not np.array_equal(epoch_order(rows, True, seed=3, epoch=2), first)
    assert not np.array_equal(epoch_order(rows, True, seed=4, epoch=1), first)
    assert sorted(first) == list(rows)


def test_shuffled_labels_stay_with_their_images(cache):
    images, labels = cache
    x, y = collect(make_dataset(images, labels, np.arange(20), 6, shuffle=True, seed=2, epoch=5))
    order = epoch_order(np.arange(20), True, seed=2, epoch=5)
    np.testing.assert_array_equal(x, images[order].astype("float32"))
    np.testing.assert_array_equal(y, labels[order])


def test_augmented_epoch_is_reproducible_and_differs_from_the_next_epoch(cache):
    images, labels = cache
    augment = AugmentConfig()

    def epoch(e: int) -> np.ndarray:
        return collect(make_dataset(images, labels, np.arange(20), 8, shuffle=False, seed=9, epoch=e,
                                    augment=augment))[0]

    first = epoch(1)
    np.testing.assert_array_equal(epoch(1), first)
    assert not np.array_equal(epoch(2), first)
    assert not np.array_equal(first, images.astype("float32"))


def test_no_augmentation_serves_the_cached_pixels_exactly(cache):
    images, labels = cache
    x, _ = collect(make_dataset(images, labels, np.arange(20), 8, shuffle=False, seed=9, augment=None))
    np.testing.assert_array_equal(x, images.astype("float32"))


def test_derived_seeds_differ_by_every_part_and_fit_in_31_bits():
    seeds = {derive_seed(a, b, c) for a in range(3) for b in range(3) for c in range(3)}
    assert len(seeds) == 27
    assert all(0 <= s < 2**31 for s in seeds)


@pytest.mark.parametrize("augment", [None, AugmentConfig()])
def test_datasets_run_without_tf_data_autotuning(cache, augment):
    # Autotuning's optimiser thread made every Keras epoch wait for its next round (pipeline doc).
    images, labels = cache
    dataset = make_dataset(images, labels, np.arange(20), 4, shuffle=True, seed=1, augment=augment)
    assert dataset.options().autotune.enabled is False
