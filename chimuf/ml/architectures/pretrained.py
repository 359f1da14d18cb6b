"""A pretrained baseline: what a user with few images would pick instead of training from scratch.

    image (None, S, S, 3) 0-255 → a keras.applications backbone (its own preprocessing inside,
    include_top=False), frozen → global average pooling → dropout → Dense(1, sigmoid)
    → train the head; then unfreeze the backbone's last `fine_tune_layers` layers (batch
      normalisation stays frozen, as Keras' transfer-learning guide advises) and fine-tune at a low
      learning rate

The backbone's layers are the model's own (not a nested model), so Grad-CAM and the activation
maps find its convolutions by name like any chimuf model's, and the file loads in Keras' safe mode
through chimuf.ml.modelfiles.modelfile's checks. Weights come from a local file (`pretrained.weights`, e.g.
`chimuf study --weights PATH`) or, where there is internet, Keras' own download ("imagenet").
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.errors import ConfigError, ModelError
from chimuf.ml.modelfiles.modelfile import one_line

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import PretrainedConfig

BACKBONES = {"mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large",
             "efficientnet_b0": "EfficientNetB0"}


# Keras' file names of the no-top ImageNet weights it downloads into its cache, per backbone.
CACHED_WEIGHTS = {"mobilenet_v3_small": "*mobilenet_v3_small*no_top*", "mobilenet_v3_large":
                  "*mobilenet_v3_large*no_top*", "efficientnet_b0": "efficientnetb0_notop*"}


def weights_at_hand(cfg: PretrainedConfig) -> str:
    """Where the backbone's weights are: the given file, or Keras' cached download; "" when neither
    is here (offline, the download would fail)."""
    if cfg.weights:
        return cfg.weights if Path(cfg.weights).is_file() else ""
    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    found = sorted(cache.glob(CACHED_WEIGHTS.get(cfg.backbone, "-"))) if cache.is_dir() else []
    return str(found[0]) if found else ""


def build_pretrained(image_size: int, cfg: PretrainedConfig, weights: str | None) -> keras.Model:
    """The backbone (frozen) with a new sigmoid head; `weights`: a file, "imagenet" or None."""
    import keras

    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"`pretrained.backbone` must be one of {', '.join(BACKBONES)}, "
                          f"got {cfg.backbone!r}")
    factory = getattr(keras.applications, BACKBONES[cfg.backbone])
    options = {"include_preprocessing": True} if cfg.backbone.startswith("mobilenet") else {}
    try:
        with warnings.catch_warnings():  # a mismatched file also warns once per layer; the error says it
            warnings.simplefilter("ignore", UserWarning)
            backbone = factory(input_shape=(image_size, image_size, 3), include_top=False,
                               weights=weights, **options)
    except (ValueError, OSError) as exc:  # a weights file of another backbone, no internet, ...
        raise ModelError(f"the {cfg.backbone} backbone could not be built with weights {weights!r} "
                         f"({one_line(str(exc), 200)}); pass the backbone's own no-top weights file "
                         "with --weights PATH") from None
    for layer in backbone.layers:
        layer.trainable = False
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output", dtype="float32")(x)
    return keras.Model(backbone.input, outputs, name=f"pretrained_{cfg.backbone}")


def unfreeze_top(model: keras.Model, layers: int) -> int:
    """Make the last `layers` backbone layers trainable, batch normalisation kept frozen; how many
    layers now train (the head's included)."""
    import keras

    head = {"head_pool", "head_dropout", "output"}
    backbone = [layer for layer in model.layers if layer.name not in head]
    for layer in backbone[-layers:] if layers > 0 else []:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)


def compile_pretrained(model: keras.Model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])
