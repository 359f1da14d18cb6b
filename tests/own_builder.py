"""A user's own architecture, as a user would write one: a tiny CNN with a layer type chimuf's
parameter counter (chimuf.ml.modelfiles.layershapes) does not list, so only the study's trust of its own
files (by digest) lets it load again."""

from __future__ import annotations

from typing import Any


def tiny(image_size: int, seed: int) -> Any:
    import keras

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="own_conv")(x)
    x = keras.layers.AdaptiveAveragePooling2D(2)(x)  # not in layershapes' list
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="tiny_own")
