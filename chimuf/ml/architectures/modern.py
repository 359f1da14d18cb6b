"""A modern from-scratch CNN for the "beyond the paper" part of the study, and how it is trained.

The paper's models (chimuf.ml.architectures.models) are 2017-style: plain conv blocks, max pooling, a flatten
into a dense layer of millions of weights, Adam at a fixed rate. This one keeps the raw-pixel
input and the single sigmoid output, so everything downstream (evaluation, Grad-CAM, export) works
unchanged, and changes what a from-scratch network of today would change:

    image (None, S, S, 3) 0-255 → rescale
      → stem: conv 3×3 stride 2 → BN → ReLU                                   (S/2, widths[0])
      → per stage i: `blocks` residual blocks (conv 3×3 → BN → ReLU → conv 3×3 → BN, + shortcut),
        the first of stages 2, 3, ... with stride 2 (a 1×1 conv shortcut where the shape changes)
      → global average pooling → dropout → Dense(1, sigmoid), float32

Training (`compile_modern`): AdamW with decoupled weight decay, a linear warm-up into a cosine
decay to zero over the whole training, binary cross-entropy with label smoothing; mixup/CutMix
(chimuf.ml.training.mixing) on top of the paper's augmentation when switched on. Which of these pieces are
on by default was decided by measurement (see the ablation in README's "Beyond the paper").

Layers are named (stem_conv, s2b1_conv1, ...) so Grad-CAM and the activation maps find them.
Batch normalisation is chimuf.ml.architectures.fusednorm's FusedBatchNorm (TensorFlow's fused kernel, the same
statistics as Keras' layer): a training image takes about two thirds of the CPU time it takes with Keras'
(`python -m benchmarks.fused_norm`). Every other layer is built in; the model loads in Keras' safe
mode through chimuf.ml.modelfiles.modelfile, which registers FusedBatchNorm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimuf.core.errors import ConfigError
from chimuf.ml.architectures.models import PRECISIONS, loss_scaled, training_strategy
from chimuf.ml.training.seeds import WEIGHTS, derive_seed

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import ModernConfig


def build_modern(image_size: int, cfg: ModernConfig, precision: str = "float32",
                 total_steps: int = 0, fused_norm: bool = True) -> keras.Model:
    """A fresh, uncompiled modern model for `image_size`² RGB images of raw pixels, whose batch
    normalisation statistics settle within `total_steps` training steps (0: Keras' default);
    `fused_norm` False builds Keras' BatchNormalization instead (the benchmark's baseline)."""
    import keras

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got `{precision}`")
    halvings = len(cfg.widths)  # the stem and every stage after the first halve the side
    if image_size < 2**halvings:
        raise ConfigError(f"image_size {image_size} is too small for the modern model: its "
                          f"{halvings} halvings need at least {2**halvings} pixels")
    p = (precision, bn_momentum(total_steps), fused_norm)
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale", dtype=precision)(inputs)
    # (None, S, S, 3) → (None, S/2, S/2, widths[0])
    x = conv_bn(x, cfg.widths[0], 2, "stem", p)
    x = keras.layers.ReLU(name="stem_relu", dtype=precision)(x)
    for stage, width in enumerate(cfg.widths, start=1):
        for block in range(1, cfg.blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = residual_block(x, width, stride, f"s{stage}b{block}", p)
    x = keras.layers.GlobalAveragePooling2D(name="pool", dtype=precision)(x)  # (None, widths[-1])
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="dropout", dtype=precision)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="modern")


def bn_momentum(total_steps: int) -> float:
    """Momentum of the moving mean and variance: Keras' 0.99 needs about 500 steps to forget its
    initial values (0.99**500 < 0.01); a small folder trains for far fewer (84 photos, batch 64,
    25 epochs: 50 steps), and its validation and test predictions would use statistics that are
    still mostly the initial ones: a model at chance whatever it learnt. Fewer steps, less memory,
    so that about 5 steps' worth remains at the end; full-size studies keep 0.99."""
    if total_steps <= 0:
        return 0.99
    return max(0.5, min(0.99, 1.0 - 5.0 / total_steps))


def conv_bn(x: keras.KerasTensor, width: int, stride: int, name: str, p: tuple[str, float, bool],
            kernel: int = 3) -> keras.KerasTensor:
    """Conv (no bias) then batch normalisation; `p` is (precision, batch-norm momentum, fused)."""
    import keras

    from chimuf.ml.architectures.fusednorm import FusedBatchNorm

    precision, momentum, fused = p
    x = keras.layers.Conv2D(width, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv", dtype=precision)(x)
    norm = FusedBatchNorm if fused else keras.layers.BatchNormalization
    return norm(momentum=momentum, name=f"{name}_bn", dtype=precision)(x)


def residual_block(x: keras.KerasTensor, width: int, stride: int, name: str,
                   p: tuple[str, float, bool]) -> keras.KerasTensor:
    """conv-BN-ReLU-conv-BN plus the input (projected by a 1×1 conv where the shape changes), ReLU."""
    import keras

    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = conv_bn(x, width, stride, f"{name}_proj", p, kernel=1)
    y = conv_bn(x, width, stride, f"{name}_a", p)
    y = keras.layers.ReLU(name=f"{name}_a_relu", dtype=p[0])(y)
    y = conv_bn(y, width, 1, f"{name}_b", p)
    x = keras.layers.Add(name=f"{name}_add", dtype=p[0])([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu", dtype=p[0])(x)


def compile_modern(model: keras.Model, cfg: ModernConfig, steps_per_epoch: int) -> None:
    """AdamW, warm-up then cosine decay over `cfg.epochs`, label-smoothed cross-entropy."""
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, cfg.warmup_epochs * steps_per_epoch)
    # constant: a cosine "decay" to alpha = 1 is the peak rate throughout, after the same warm-up
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else cfg.learning_rate, decay_steps=total - warmup,
        alpha=1.0 if cfg.schedule == "constant" else 0.0,
        warmup_target=cfg.learning_rate if warmup else None, warmup_steps=warmup)
    model.compile(
        optimizer=loss_scaled(model, keras.optimizers.AdamW(learning_rate=schedule,
                                                             weight_decay=cfg.weight_decay)),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def seeded_modern(image_size: int, cfg: ModernConfig, precision: str, steps_per_epoch: int,
                  seed: int, fused_norm: bool = True) -> keras.Model:
    """A compiled modern model whose initial weights depend on `seed` alone."""
    import keras

    keras.utils.set_random_seed(derive_seed(seed, 0, WEIGHTS))
    with training_strategy().scope():
        model = build_modern(image_size, cfg, precision, cfg.epochs * steps_per_epoch, fused_norm)
        compile_modern(model, cfg, steps_per_epoch)
    return model
