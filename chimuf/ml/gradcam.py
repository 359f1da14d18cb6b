"""What a CNN looks at: Grad-CAM and its relatives, and feature maps, through tf-keras-vis.

The model has one sigmoid output p = P(classes[1]) = sigmoid(z). A class is explained through
the direction in which its probability grows: +z for class 1 (p), −z for class 0 (1 − p), so
the two classes get different maps. The maps are those of p and 1 − p themselves, up to the
factor p(1 − p) that each map's normalisation removes; explaining z keeps them from going blank
when a confident p rounds to 1.0 (`logit_model`). Models trained in mixed bfloat16 are explained
through a float32 copy with the same weights.

tf-keras-vis 0.8.7 works under Keras 3 when the conv layer is passed by name with
`seek_penultimate_conv_layer=False`. Its Score-CAM applies a softmax to the model's output before
scoring, which turns a single output into the constant 1; it is given the model with the two
outputs (log(1 − p), log p) instead, whose softmax is (1 − p, p) again (`two_class_model`).
Images go to tf-keras-vis as raw 0–255 float32: the model rescales inside.

Expected: on images whose class is a bright corner (the tests), the last conv layer's Grad-CAM
of the true class lights that corner.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.errors import ModelError
from chimuf.ml.architectures.models import conv_layer_names, float32_copy

if TYPE_CHECKING:
    import keras

SCORECAM_MAX_N = 16  # Faster Score-CAM: only the feature maps of highest variance are masked in
SMOOTHGRAD_SAMPLES = 20  # noisy copies of each image averaged by SmoothGrad
SMOOTHGRAD_NOISE = 0.2  # noise sigma as a share of each image's pixel range


def conv_layers(model: keras.Model, where: str | Path) -> list[str]:
    """Names of the model's Conv2D layers, first to last; a model without any cannot be explained."""
    names = conv_layer_names(model)
    if not names:
        raise ModelError(f"model `{where}` has no Conv2D layer; Grad-CAM and activation maps need "
                         "at least one. Explain a CNN built by chimuf.ml.architectures.models")
    return names



def logit_model(model: keras.Model) -> keras.Model:
    """A float32 copy of `model` with the same weights whose output is the logit z, not p.

    Why the logit: Grad-CAM of p (class 1) or of 1 − p (class 0) is Grad-CAM of +z or −z times
    p(1 − p), a positive factor per image that the map's normalisation removes; but when a
    prediction is confident, p rounds to 1.0 in float32, p(1 − p) to 0, and the map of p comes
    out blank. Explaining ±z gives the same maps without that loss. Why float32: a model trained
    in mixed bfloat16 would give gradients of 8 significant bits.
    """
    return float32_copy(model, linear_output=True)


def class_score(class_ids: Sequence[int]) -> Any:
    """Score of class `class_ids[i]` for image i on the logit model: +z for class 1, −z for
    class 0 (tf-keras-vis' BinaryScore), the directions in which p and 1 − p grow."""
    from tf_keras_vis.utils.scores import BinaryScore

    return BinaryScore([bool(c) for c in class_ids])


def two_class_model(logits: keras.Model) -> keras.Model:
    """The logit model with outputs (log(1 − p), log p), for Score-CAM.

    Score-CAM applies a softmax to the model's output before scoring; on a single output that
    is the constant 1, whatever the image. The softmax of (log(1 − p), log p) is (1 − p, p), so
    its CategoricalScore(class) is the probability of the class, as Score-CAM defines it.
    """
    import keras
    from keras import ops

    z = logits.outputs[0]  # (None, 1)
    pair = ops.concatenate([-ops.softplus(z), -ops.softplus(-z)], axis=-1)  # (None, 2), stable
    return keras.Model(logits.inputs, pair)


@contextlib.contextmanager
def quiet_keras() -> Iterator[None]:
    """No progress bars from the `predict` calls inside tf-keras-vis, none of Keras 3's warnings
    about the list-shaped inputs it passes, and no TensorFlow notes about retracing `predict`
    for its batch shapes; all restored afterwards."""
    import keras

    was_on = keras.utils.is_interactive_logging_enabled()
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    keras.utils.disable_interactive_logging()
    tf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
            yield
    finally:
        tf_logger.setLevel(level)
        if was_on:
            keras.utils.enable_interactive_logging()


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """SmoothGrad draws its noise from numpy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def gradcam_maps(model: keras.Model, pixels: np.ndarray, layers: Sequence[str],
                 class_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """Grad-CAM at each of `layers` for class `class_ids[i]` of image i: (N, S, S) in [0, 1].

    `model` is the logit model (`logit_model`).
    """
    from tf_keras_vis.gradcam import Gradcam

    n = len(pixels)
    pixels, class_ids = even_batch(pixels, class_ids)
    gradcam = Gradcam(model, clone=False)
    score = class_score(class_ids)
    seed_input = pixels.astype(np.float32)  # raw 0-255: the model rescales inside
    with quiet_keras():
        return {layer: as_maps(gradcam(score, seed_input, penultimate_layer=layer,
                                       seek_penultimate_conv_layer=False), len(pixels))[:n]
                for layer in layers}


def even_batch(pixels: np.ndarray, class_ids: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """`pixels` (N, S, S, 3) and `class_ids` with the last image repeated when N is odd.

    Why: TensorFlow 2.21's CPU gradient of a strided convolution's filter (oneDNN) corrupted the
    heap and crashed the process for odd batches of the modern recipe's small maps (1, 3, 5 or 7
    images at 32 px; 2, 8 and 10 ran). Gradients are taken per image, so the copy changes no map;
    callers drop its map.
    """
    if len(pixels) % 2 == 0:
        return pixels, list(class_ids)
    return np.concatenate([pixels, pixels[-1:]]), [*class_ids, class_ids[-1]]


def method_maps(model: keras.Model, pixels: np.ndarray, layer: str, class_ids: Sequence[int],
                seed: int) -> list[tuple[str, np.ndarray]]:
    """Four explanations of class `class_ids[i]` of image i at `layer`, each (N, S, S) in [0, 1].

    `model` is the logit model; SmoothGrad's noise is drawn from `seed`.
    """
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    n = len(pixels)
    pixels, class_ids = even_batch(pixels, class_ids)  # see even_batch: odd batches crashed
    score = class_score(class_ids)
    seed_input = pixels.astype(np.float32)
    channels = int(model.get_layer(layer).output.shape[-1])
    cam_args = {"penultimate_layer": layer, "seek_penultimate_conv_layer": False}
    with quiet_keras():
        plus = GradcamPlusPlus(model, clone=False)(score, seed_input, **cam_args)
        scorecam = Scorecam(two_class_model(model), clone=False)(
            CategoricalScore(list(class_ids)), seed_input, max_N=min(SCORECAM_MAX_N, channels),
            **cam_args)
        with seeded_numpy(seed):
            smooth = Saliency(model, clone=False)(score, seed_input, smooth_samples=SMOOTHGRAD_SAMPLES,
                                                  smooth_noise=SMOOTHGRAD_NOISE)
    gradcam = gradcam_maps(model, pixels[:n], [layer], class_ids[:n])[layer]
    even = len(pixels)
    return [("Grad-CAM", gradcam), ("Grad-CAM++", as_maps(plus, even)[:n]),
            ("Score-CAM", as_maps(scorecam, even)[:n]), ("SmoothGrad", as_maps(smooth, even)[:n])]


def as_maps(maps: Any, n: int) -> np.ndarray:
    """tf-keras-vis output as float32 (N, S, S), NaN (a constant map) as 0."""
    array = np.asarray(maps, dtype=np.float32).reshape(n, *np.shape(maps)[-2:])
    return np.nan_to_num(array, nan=0.0)


def feature_maps(model: keras.Model, layers: Sequence[str], pixels: np.ndarray) -> list[np.ndarray]:
    """Each conv layer's output for `pixels`: per layer float32 (N, h, w, channels)."""
    import keras

    probe = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    outputs = probe(pixels.astype(np.float32), training=False)  # a few images: one eager call
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [np.asarray(maps, dtype=np.float32) for maps in outputs]
