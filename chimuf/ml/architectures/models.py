"""The paper's three CNNs (section 4) and the tuned model-3 family (section 6), as Keras models.

Every model is a Keras 3 Functional model that takes raw pixels:

    image (None, S, S, 3) float32, 0-255
      → rescale (×1/255)
      → [conv_i 3×3 'same' ReLU → pool_i 2×2/2 → (dropout_conv_i)]  for each conv block
      → flatten → dense ReLU → (dropout_dense) → output Dense(1, sigmoid), float32

Model 1 has two conv blocks (32, 64 filters) and no dropout; model 2 adds dropout 0.25 after each
pool and 0.3 before the output; model 3 adds a third block of 128 filters. The "tuned" family is
model 3 with its filters, dense units and dropout rates taken from `Hyperparameters`
(chimuf.core.hyperparameters), which is how the tuner builds its trials and how the final model
is made.

Why these choices: the rescale sits inside the model so a saved `.keras` file is the whole
classifier (no preprocessing to remember); every layer has a fixed name because Grad-CAM
(tf-keras-vis) finds conv layers by name; only built-in layers are used, so models load in
Keras safe mode. Mixed precision is set per layer (`dtype="mixed_bfloat16"` or "mixed_float16"),
never through the global policy, so building one model cannot change another; the output layer
stays float32 so the probabilities and the loss are computed at full precision. A mixed float16
model trains through Keras' LossScaleOptimizer (float16's range is too small for small
gradients); bfloat16 keeps float32's range and needs none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core.errors import ConfigError
from chimuf.core.files import fsync_dir
from chimuf.core.hyperparameters import MODEL3, Hyperparameters
from chimuf.core.results import LayerRow
from chimuf.ml.training.seeds import WEIGHTS, derive_seed

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import keras

    from chimuf.ml.machine import Gpu

ARCHITECTURES = ("model1", "model2", "model3", "tuned")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Compute capability from which NVIDIA GPUs compute bfloat16 natively (Ampere), and float16 on
# tensor cores (Volta); below that, mixed precision is emulated and slower than float32.
BF16_CAPABILITY = (8, 0)
FP16_CAPABILITY = (7, 0)
@dataclass(frozen=True)
class Blueprint:
    """What differs between the architectures; `None` dropout means no Dropout layer at all."""

    filters: tuple[int, ...]
    dense_units: int
    dropout_conv: float | None
    dropout_dense: float | None


def blueprint(architecture: str, hyperparameters: Mapping[str, float] | None) -> Blueprint:
    """The layer plan of `architecture` (paper 4.1-4.3, or the tuned family of paper 6)."""
    if architecture == "model1":
        return Blueprint((32, 64), 64, None, None)
    if architecture == "model2":
        return Blueprint((32, 64), 64, 0.25, 0.3)
    if architecture == "model3":
        return Blueprint((32, 64, 128), 64, 0.25, 0.3)
    if architecture == "tuned":
        h = Hyperparameters.of(hyperparameters or MODEL3)
        return Blueprint(h.filters, h.dense_units, h.dropout_conv, h.dropout_dense)
    raise ConfigError(f"unknown architecture `{architecture}`; allowed: {', '.join(ARCHITECTURES)}")


def parameter_count(plan: Blueprint, image_size: int) -> int:
    """Parameters of a model of `plan` for `image_size`² images, as Keras' count_params() counts
    them, without building it (3×3 'same' convs with bias, 2×2 pools, dense, one output)."""
    params, channels, side = 0, 3, image_size
    for filters in plan.filters:
        params += 9 * channels * filters + filters  # (3, 3, channels, filters) kernel + bias
        channels, side = filters, side // 2
    flat = side * side * channels
    return params + flat * plan.dense_units + plan.dense_units + plan.dense_units + 1


def build_model(
    architecture: str,
    image_size: int,
    hyperparameters: Mapping[str, float] | None = None,
    precision: str = "float32",
) -> keras.Model:
    """A fresh, uncompiled model of `architecture` for `image_size`² RGB images of raw pixels.

    Weights are initialised from Keras' global seed: call `keras.utils.set_random_seed` first
    for a reproducible initialisation.
    """
    import keras

    plan = blueprint(architecture, hyperparameters)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got `{precision}`")
    blocks = len(plan.filters)
    if image_size < 2**blocks:
        raise ConfigError(
            f"image_size {image_size} is too small for {architecture}: its {blocks} pooling layers "
            f"need at least {2**blocks} pixels; raise data.image_size"
        )
    p = precision
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale", dtype=p)(inputs)
    for i, filters in enumerate(plan.filters, start=1):
        # (None, s, s, c) → conv → (None, s, s, filters) → pool → (None, s/2, s/2, filters)
        x = keras.layers.Conv2D(filters, (3, 3), activation="relu", padding="same",
                                name=f"conv{i}", dtype=p)(x)
        x = keras.layers.MaxPooling2D(pool_size=(2, 2), strides=2, name=f"pool{i}", dtype=p)(x)
        if plan.dropout_conv is not None:
            x = keras.layers.Dropout(plan.dropout_conv, name=f"dropout{i}", dtype=p)(x)
    x = keras.layers.Flatten(name="flatten", dtype=p)(x)
    x = keras.layers.Dense(plan.dense_units, activation="relu", name="dense", dtype=p)(x)
    if plan.dropout_dense is not None:
        x = keras.layers.Dropout(plan.dropout_dense, name="dropout_dense", dtype=p)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=architecture)


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Adam on binary cross-entropy, reporting accuracy and ROC AUC (the paper's set-up)."""
    import keras

    model.compile(
        optimizer=loss_scaled(model, keras.optimizers.Adam(learning_rate=learning_rate)),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def loss_scaled(model: keras.Model, optimizer: Any) -> Any:
    """`optimizer`, wrapped in Keras' LossScaleOptimizer when `model` computes in mixed float16.

    Why: gradients below float16's smallest normal (6e-5) flush to zero; the wrapper multiplies the
    loss by a dynamic scale before the gradients and divides them after. Keras wraps on its own only
    when the model's global policy is mixed_float16, and chimuf sets precision per layer.
    """
    import keras

    wrapped = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if wrapped or model_precision(model) != "mixed_float16":
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def build_trainable_model(architecture: str, image_size: int, hyperparameters: Mapping[str, float] | None,
                          precision: str, learning_rate: float) -> keras.Model:
    """`build_model` + `compile_model` under the training strategy: MirroredStrategy on a machine
    with several GPUs, TensorFlow's default strategy otherwise."""
    with training_strategy().scope():
        model = build_model(architecture, image_size, hyperparameters, precision)
        compile_model(model, learning_rate)
    return model


def seeded_model(architecture: str, image_size: int, hyperparameters: Mapping[str, float] | None,
                 precision: str, learning_rate: float, seed: int) -> keras.Model:
    """A compiled model whose initial weights depend on `seed` alone.

    Every training of a study starts from the same seed, so a model and its augmented twin, the
    final model and each k-fold model start from the same draw of weights.
    """
    import keras

    keras.utils.set_random_seed(derive_seed(seed, 0, WEIGHTS))
    return build_trainable_model(architecture, image_size, hyperparameters, precision, learning_rate)


def training_strategy() -> Any:
    """MirroredStrategy over every GPU when there are several, else TensorFlow's default strategy.

    Mirrored: each batch is split across the GPUs and the gradients summed, so a batch of
    `train.batch_size` images means the same as on one device. Models must be built and compiled
    inside `strategy.scope()` (Keras Tuner does so for a tuner given `distribution_strategy`).
    """
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()


def float32_copy(model: keras.Model, linear_output: bool = False) -> keras.Model:
    """A float32 copy of `model` with the same weights; with `linear_output`, the output layer's
    sigmoid dropped, so the copy gives the logit z instead of p = sigmoid(z).

    Why: a model trained in mixed bfloat16 computes in 8 significant bits; gradients of it
    (Grad-CAM) and exports of it (TFLite, ONNX: bf16 kernels are rare there) want float32. chimuf's
    FusedBatchNorm becomes Keras' BatchNormalization with the same four weights in the same order:
    the copy computes the same function with ops every exporter and gradient knows (TensorFlow's
    fused inference kernel, differentiated in a small model, crashed its CPU convolution gradient).
    """
    import keras

    output_layer = model.layers[-1].name  # Dense(1, sigmoid), as chimuf.ml.modelfiles.modelfile checked

    def float32_layer(layer: Any) -> Any:
        if type(layer).__name__ == "FusedBatchNorm":
            return keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon,
                                                   name=layer.name, dtype="float32")
        config = layer.get_config()
        if not isinstance(layer, keras.layers.Layer):  # a bare op (keras.ops.add in MobileNetV3)
            config.pop("dtype", None)
            return layer.__class__.from_config(config)
        config["dtype"] = "float32"
        if linear_output and layer.name == output_layer:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy


def layer_rows(model: keras.Model) -> list[LayerRow]:
    """One row per layer (input layer left out), as `model.summary()` shows them."""
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        rows.append(LayerRow(layer.name, kind, str(tuple(layer.output.shape)), layer.count_params()))
    return rows


def conv_layer_names(model: keras.Model) -> list[str]:
    """Names of the conv layers, first to last: what Grad-CAM and activation maps walk."""
    return [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]


def model_precision(model: keras.Model) -> str:
    """The dtype policy the model's first conv layer was built with: "float32", "mixed_bfloat16" or
    "mixed_float16" (an ensemble, chimuf.stages.choose: its first nested model's; a pretrained
    backbone without Conv2D layers: its first layer with weights)."""
    import keras

    names = conv_layer_names(model)
    if names:
        return str(model.get_layer(names[0]).dtype_policy.name)
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        return model_precision(nested[0])
    layer = next((layer for layer in model.layers if layer.weights), model.layers[-1])
    return str(layer.dtype_policy.name)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision trainings run in, and why (the run facts say both)."""

    precision: str  # one of PRECISIONS
    reason: str


def resolve_precision(setting: str) -> str:
    """The precision to train with: `setting` itself, or for "auto" the fastest safe one here."""
    return precision_choice(setting).precision


def precision_choice(setting: str) -> PrecisionChoice:
    """`setting` with its reason; for "auto", `choose_precision` on this machine's GPUs and CPU."""
    if setting in PRECISIONS:
        return PrecisionChoice(setting, "set in the config (train.precision)")
    if setting != "auto":
        raise ConfigError(
            f"`train.precision` must be 'auto', {', '.join(repr(p) for p in PRECISIONS)}, got `{setting}`"
        )
    from chimuf.core import environment
    from chimuf.ml.machine import gpus

    return choose_precision(gpus(), environment.cpu_flags(environment.read_cpuinfo()))


def choose_precision(gpus: Sequence[Gpu], cpu_flags: set[str]) -> PrecisionChoice:
    """What "auto" means on a machine with `gpus` (TensorFlow's) and a CPU with `cpu_flags`.

    Mixed precision pays only where the hardware computes the narrow type natively; elsewhere it is
    emulated and slower than float32. With GPUs, the least capable one decides (each trains a
    share of every batch):
      compute capability >= 8.0 (A100, L4, H100, ...)  mixed_bfloat16: native, no loss scaling
      7.x (V100, T4: tensor cores without bf16)         mixed_float16 with loss scaling
      below 7.0, or not known                           float32
    On a CPU: mixed_bfloat16 with AVX-512 BF16 or AMX-BF16 (oneDNN's bf16 kernels), else float32.
    """
    if gpus:
        weakest = min(gpus, key=lambda gpu: gpu.compute_capability or (0, 0))
        cc = weakest.compute_capability
        said = f"{weakest.name} (compute capability {cc[0]}.{cc[1]})" if cc else weakest.name
        if cc is None:
            return PrecisionChoice("float32", f"auto: the GPU {said} did not say its compute capability")
        if cc >= BF16_CAPABILITY:
            return PrecisionChoice("mixed_bfloat16", f"auto: the GPU {said} computes bfloat16 natively")
        if cc >= FP16_CAPABILITY:
            return PrecisionChoice("mixed_float16", f"auto: the GPU {said} has float16 tensor cores "
                                   "but no bfloat16; float16 with loss scaling")
        return PrecisionChoice("float32", f"auto: the GPU {said} has no tensor cores")
    native = sorted(cpu_flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return PrecisionChoice("mixed_bfloat16",
                               f"auto: the CPU computes bfloat16 natively ({', '.join(native)})")
    return PrecisionChoice("float32", "auto: no GPU, and the CPU has neither AVX-512 BF16 nor AMX-BF16")


def save_model(model: keras.Model, path: Path) -> Path:
    """Save `model` (with its optimizer state) as a `.keras` file, atomically.

    Keras writes the archive in place, so it goes to a temporary name in the same folder first
    and is renamed over `path` only when complete: a reader sees the old model or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.keras")
    model.save(partial)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)
    fsync_dir(path.parent)
    return path
