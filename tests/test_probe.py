"""The probe times the steady state: neither fit's start-up nor the slow first steps count."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from chimuf.core.config import AugmentConfig
from chimuf.ml.training import probe as probing

STEP_S = 0.05  # a steady training or prediction step of the fake model
START_S = 1.0  # fit's or predict's start-up, and the first step after tracing: not the pace


class SlowStartModel:
    """Sleeps START_S before its batches and in its first step ever, STEP_S per later step."""

    def __init__(self) -> None:
        self.inputs = [SimpleNamespace(shape=(None, 8, 8, 3))]
        self.steps = 0

    def run(self, data, callbacks, hook: str) -> None:
        time.sleep(START_S)
        for batch, _ in enumerate(data):
            time.sleep(START_S if self.steps == 0 else STEP_S)
            self.steps += 1
            for callback in callbacks:
                getattr(callback, hook)(batch, {})

    def fit(self, data, epochs=1, verbose=0, shuffle=False, callbacks=()):
        self.run(data, callbacks, "on_train_batch_end")

    def predict(self, data, verbose=0, callbacks=()):
        self.run(data, callbacks, "on_predict_batch_end")


def test_probe_times_steps_after_warm_up_without_start_up_costs(monkeypatch):
    # batches of nothing: the fake model only counts them
    monkeypatch.setattr(probing, "make_dataset", lambda images, labels, rows, batch_size, **_: [None] * (
        len(rows) // batch_size))
    pace = probing.probe(SlowStartModel(), batch_size=4, augment=AugmentConfig())
    steady = 4 / STEP_S  # images per second of a steady step
    # a loaded machine stretches every sleep; timing the whole fit would give about 0.13 × steady
    assert 0.4 * steady < pace.train_images_per_s <= steady * 1.01
    assert 0.4 * steady < pace.infer_images_per_s <= steady * 1.01


def test_an_epoch_is_its_images_at_the_probed_pace_plus_a_fixed_overhead():
    pace = probing.Pace(train_images_per_s=100.0, infer_images_per_s=400.0)
    assert pace.epoch_s(1000, 200) == pytest.approx(10 + 0.5 + probing.EPOCH_OVERHEAD_S)
