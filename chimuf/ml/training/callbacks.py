"""Keras callbacks of chimuf's own, for training loops that Keras runs (the tuning trials).

`EarlyStoppingRule` is the trainings' early stopping (chimuf.ml.training.fit.watch: val_loss, patience,
watched from `start_from_epoch` on, best weights restored) as a callback, so a trial that Keras
Tuner trains with `model.fit` stops exactly where chimuf's own fit loop would.
"""

from __future__ import annotations

from typing import Any

import keras

from chimuf.ml.training.fit import Stopping, StopState, watch


class EarlyStoppingRule(keras.callbacks.Callback):
    def __init__(self, rule: Stopping):
        super().__init__()
        self.rule = rule
        self.state = StopState()
        self.best_weights: list[Any] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.state, self.best_weights = StopState(), None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        val_loss = (logs or {}).get("val_loss")
        if val_loss is None:
            return
        self.state = watch(self.state, epoch + 1, float(val_loss), self.rule)
        if self.state.best_epoch == epoch + 1:
            self.best_weights = self.model.get_weights()
        if self.state.stopped:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:  # some epoch was watched: keep its weights
            self.model.set_weights(self.best_weights)
