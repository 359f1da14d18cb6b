"""Error analysis (paper section 9): what the final model learned, and where it looks when wrong.

Five views of the final model, each saved as figures with captions for the report:

1. kernel weights of every conv layer (paper 9.1);
2. activation maps of every conv layer for a few test images, right and wrong, of both classes
   (paper 9.2);
3. Grad-CAM of every conv layer on the misclassified test images, most confident mistakes first,
   explaining the predicted (wrong) class and then the true class (paper 9.3, figure 12);
4. Grad-CAM, Grad-CAM++, Score-CAM and SmoothGrad side by side at the last conv layer;
5. a gallery of the mistakes with the probability the model gave the true class.

Which image is right or wrong comes from the evaluate stage's predictions CSV, so this stage
agrees with the reported confusion matrix by construction.

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
import csv
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.errors import DataError, ModelError
from chimuf.core.results import ExplainedImage, ExplainOutcome, Figure
from chimuf.ml import modelfile
from chimuf.ml.explain_plots import (
    GALLERY_COLUMNS,
    MAX_MAPS,
    draw_activation_maps,
    draw_filter_grid,
    draw_gallery,
    draw_heatmap_grid,
    draw_rgb_kernels,
)
from chimuf.ml.plots import save_figure

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AuditConfig, ExplainConfig
    from chimuf.core.console import Console, Progress
    from chimuf.core.engine import StageContext
    from chimuf.core.results import CacheOutcome, EvaluateOutcome, SplitOutcome, TrainingOutcome

# p > THRESHOLD predicts classes[1]: the rule of chimuf.metrics (Keras' binary accuracy), so
# what is a mistake here is a mistake in the evaluate stage's confusion matrix.
THRESHOLD = 0.5
GALLERY_MAX = 6 * GALLERY_COLUMNS  # mistakes shown in the gallery, most confident first
SCORECAM_MAX_N = 16  # Faster Score-CAM: only the feature maps of highest variance are masked in
SMOOTHGRAD_SAMPLES = 20  # noisy copies of each image averaged by SmoothGrad
SMOOTHGRAD_NOISE = 0.2  # noise sigma as a share of each image's pixel range


@dataclass
class Prediction:
    """One test image as the evaluate stage scored it."""

    path: str  # relative to the data folder
    true_id: int
    probability: float  # P(classes[1]) given by the model

    @property
    def predicted_id(self) -> int:
        return int(self.probability > THRESHOLD)

    @property
    def right(self) -> bool:
        return self.predicted_id == self.true_id

    def probability_of(self, class_id: int) -> float:
        return self.probability if class_id == 1 else 1.0 - self.probability


@dataclass
class ExplainedFile:
    """One file of `chimuf predict --explain`: its overlay, or why there is none."""

    path: str  # the input file as given
    output: str  # the Grad-CAM overlay PNG written; "" when the file could not be read
    label: str  # the predicted class explained; "" when the file could not be read
    probability: float  # the model's probability of `label`; NaN when the file could not be read
    error: str = ""


# --- the stage ---------------------------------------------------------------------------------


def explain_errors(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome,
                   final: TrainingOutcome, evaluation: EvaluateOutcome, cfg: ExplainConfig,
                   seed: int) -> ExplainOutcome:
    """Kernels, activation maps, Grad-CAM per conv layer and a gallery of the test mistakes.

    With no mistakes the Grad-CAM, method and gallery figures are absent (`n_misclassified` is
    0); kernels and activation maps are still drawn.
    """
    classes = list(evaluation.classes)
    csv_path = ctx.run_dir / evaluation.predictions_csv
    predictions = read_predictions(csv_path, classes)
    check_in_test_split(predictions, split, csv_path)
    model = logit_model(modelfile.load_model(ctx.run_dir / final.model_path))
    layers = conv_layers(model, final.model_path)
    check_input_size(model, cache.image_size, final.model_path)
    image_set = read_cache(cache)

    mistakes = sorted_mistakes(predictions)
    shown = mistakes[: cfg.max_images]
    chosen = choose_activation_images(predictions, cfg.activation_images, seed)
    total = len(layers) + len(chosen) + (2 + len(shown) + 1 if shown else 0) + bool(mistakes)
    with ctx.console.progress("explain", total, "figures") as progress:
        # 1. What each conv layer's filters look like (paper 9.1).
        kernel_figures = save_kernel_figures(ctx, model, layers, progress)

        # 2. What each conv layer makes of a few test images (paper 9.2).
        activation_images = save_activation_figures(ctx, model, layers, image_set, chosen,
                                                    classes, progress)

        # 3-4. Where the model looked on its most confident mistakes (paper 9.3).
        gradcam_figures: list[Figure] = []
        method_figures: list[Figure] = []
        per_image: list[Figure] = []
        if shown:
            pixels = pixels_of(image_set, [p.path for p in shown])  # (N, S, S, 3) uint8
            gradcam_figures, per_image = save_gradcam_figures(ctx, model, layers, pixels, shown,
                                                              classes, progress)
            method_figures = [save_method_figure(ctx, model, layers[-1], pixels, shown, classes,
                                                 seed, progress)]

        # 5. All mistakes at a glance.
        gallery = save_gallery(ctx, image_set, mistakes, len(predictions), classes, progress)

    explained = [explained_image(p, classes) for p in mistakes]
    for item, figure in zip(explained[: len(per_image)], per_image, strict=True):
        item.figure = figure
    return ExplainOutcome(
        conv_layers=layers,
        kernel_figures=kernel_figures,
        activation_figures=[item.figure for item in activation_images if item.figure is not None],
        gradcam_figures=gradcam_figures,
        method_figures=method_figures,
        gallery_figure=gallery,
        misclassified=explained,
        n_misclassified=len(mistakes),
        activation_images=activation_images,
        n_test=len(predictions),
        threshold=THRESHOLD,
    )


# --- inputs ------------------------------------------------------------------------------------


def read_predictions(path: Path, classes: Sequence[str]) -> list[Prediction]:
    """The evaluate stage's per-image predictions, found by the CSV's header: `path`,
    `true_label` (or `label`; a class name or its id) and `probability` (of classes[1])."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"predictions file `{path}` is missing; rerun the evaluate stage") from None
    header = list(reader.fieldnames or [])
    path_col = pick_column(header, ("path",), path)
    label_col = pick_column(header, ("true_label", "label"), path)
    probability_col = pick_column(header, ("probability",), path)
    predictions = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"`{path}` line {number}"
        probability = parse_probability(row[probability_col], where)
        predictions.append(Prediction(row[path_col], label_id(row[label_col], classes, where),
                                      probability))
    return predictions


def pick_column(header: Sequence[str], names: Sequence[str], path: Path) -> str:
    """The first column of `header` named one of `names` (case-insensitive)."""
    by_name = {column.strip().lower(): column for column in header}
    for name in names:
        if name.lower() in by_name:
            return by_name[name.lower()]
    raise DataError(
        f"predictions file `{path}` has columns {list(header)}; expected one named "
        f"{' or '.join(repr(n) for n in names)}. Rerun the evaluate stage with this chimuf."
    )


def label_id(value: str, classes: Sequence[str], where: str) -> int:
    """A true label given as a class name or as its id (0 or 1)."""
    text = value.strip()
    if text in classes:
        return list(classes).index(text)
    if text in ("0", "1"):
        return int(text)
    raise DataError(f"{where}: true label {text!r} is neither one of {list(classes)} nor 0 or 1")


def parse_probability(value: str, where: str) -> float:
    try:
        probability = float(value)
    except ValueError:
        raise DataError(f"{where}: probability {value!r} is not a number") from None
    if not 0.0 <= probability <= 1.0:  # NaN fails too
        raise DataError(f"{where}: probability {value!r} is outside [0, 1]")
    return probability


def check_in_test_split(predictions: Sequence[Prediction], split: SplitOutcome,
                        csv_path: Path) -> None:
    """Every explained image must be a test image: explaining a training image as a 'test
    mistake' would mislead the report."""
    test = set(split.test)
    outside = [p.path for p in predictions if p.path not in test]
    if outside:
        raise DataError(
            f"predictions file `{csv_path}` lists {len(outside)} image(s) outside the test split, "
            f"e.g. `{outside[0]}`; rerun the evaluate stage on this run's split"
        )


def conv_layers(model: keras.Model, where: str | Path) -> list[str]:
    """Names of the model's Conv2D layers, first to last."""
    from chimuf.ml.models import conv_layer_names

    names = conv_layer_names(model)
    if not names:
        raise ModelError(f"model `{where}` has no Conv2D layer; Grad-CAM and activation maps need "
                         "at least one. Explain a CNN built by chimuf.models")
    return names


def check_input_size(model: keras.Model, image_size: int, where: str | Path) -> None:
    size = modelfile.input_size(model)
    if size != image_size:
        raise ModelError(f"model `{where}` takes {size}-pixel images but the image cache holds "
                         f"{image_size}-pixel ones; rerun the final training")


def read_cache(cache: CacheOutcome) -> Any:
    """The decoded images of the run (an ImageSet: .images, .labels, .paths, .rows)."""
    from chimuf.data.cache import load_images

    return load_images(cache)


def pixels_of(image_set: Any, paths: Sequence[str]) -> np.ndarray:
    """uint8 (N, S, S, 3): the cached pixels of `paths`, in that order."""
    rows = np.asarray(image_set.rows(list(paths)), dtype=np.int64)
    return np.asarray(image_set.images[rows], dtype=np.uint8)


# --- which images ------------------------------------------------------------------------------


def sorted_mistakes(predictions: Sequence[Prediction]) -> list[Prediction]:
    """The misclassified ones, most confident first: lowest probability of the true class."""
    wrong = [p for p in predictions if not p.right]
    return sorted(wrong, key=lambda p: (p.probability_of(p.true_id), p.path))


def choose_activation_images(predictions: Sequence[Prediction], count: int,
                             seed: int) -> list[Prediction]:
    """`count` test images, the same for the same seed, taken in turn from four groups (by
    true class and outcome): class 0 right, class 1 wrong, class 1 right, class 0 wrong. Empty
    groups are passed over; two images already show both classes, a success and a mistake."""
    rng = np.random.default_rng(seed)
    groups = []
    for right, class_id in ((True, 0), (False, 1), (True, 1), (False, 0)):
        members = sorted((p for p in predictions if p.right == right and p.true_id == class_id),
                         key=lambda p: p.path)
        groups.append([members[i] for i in rng.permutation(len(members))])
    chosen: list[Prediction] = []
    while len(chosen) < count and any(groups):
        for group in groups:
            if group and len(chosen) < count:
                chosen.append(group.pop(0))
    return chosen


def explained_image(p: Prediction, classes: Sequence[str]) -> ExplainedImage:
    return ExplainedImage(path=p.path, true_label=classes[p.true_id],
                          predicted_label=classes[p.predicted_id],
                          probability_true=p.probability_of(p.true_id))


def row_label(p: Prediction, classes: Sequence[str]) -> str:
    return (f"true {classes[p.true_id]}\npredicted {classes[p.predicted_id]}\n"
            f"P(true) = {p.probability_of(p.true_id):.2f}")


# --- the computations (TensorFlow) -------------------------------------------------------------


def logit_model(model: keras.Model) -> keras.Model:
    """A float32 copy of `model` with the same weights whose output is the logit z, not p.

    Why the logit: Grad-CAM of p (class 1) or of 1 − p (class 0) is Grad-CAM of +z or −z times
    p(1 − p), a positive factor per image that the map's normalisation removes; but when a
    prediction is confident, p rounds to 1.0 in float32, p(1 − p) to 0, and the map of p comes
    out blank. Explaining ±z gives the same maps without that loss. Why float32: a model trained
    in mixed bfloat16 would give gradients of 8 significant bits.
    """
    import keras

    output_layer = model.layers[-1].name  # Dense(1, sigmoid), as chimuf.modelfile checked

    def float32_layer(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float32"
        if layer.name == output_layer:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    return copy


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

    gradcam = Gradcam(model, clone=False)
    score = class_score(class_ids)
    seed_input = pixels.astype(np.float32)  # raw 0-255: the model rescales inside
    with quiet_keras():
        return {layer: as_maps(gradcam(score, seed_input, penultimate_layer=layer,
                                       seek_penultimate_conv_layer=False), len(pixels))
                for layer in layers}


def method_maps(model: keras.Model, pixels: np.ndarray, layer: str, class_ids: Sequence[int],
                seed: int) -> list[tuple[str, np.ndarray]]:
    """Four explanations of class `class_ids[i]` of image i at `layer`, each (N, S, S) in [0, 1].

    `model` is the logit model; SmoothGrad's noise is drawn from `seed`.
    """
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    score = class_score(class_ids)
    seed_input = pixels.astype(np.float32)
    n = len(pixels)
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
    gradcam = gradcam_maps(model, pixels, [layer], class_ids)[layer]
    return [("Grad-CAM", gradcam), ("Grad-CAM++", as_maps(plus, n)),
            ("Score-CAM", as_maps(scorecam, n)), ("SmoothGrad", as_maps(smooth, n))]


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


# --- the figures -------------------------------------------------------------------------------


def save(ctx: StageContext, figure: Any, name: str, caption: str, progress: Progress) -> Figure:
    path = save_figure(figure, ctx.dir / f"{name}.png")
    progress.update(1, name)
    return Figure(ctx.rel(path), caption)


def save_kernel_figures(ctx: StageContext, model: keras.Model, layers: Sequence[str],
                        progress: Progress) -> list[Figure]:
    """One figure per conv layer; the first is split by colour channel when its input is RGB."""
    figures = []
    for index, name in enumerate(layers):
        kernel = np.asarray(model.get_layer(name).get_weights()[0], dtype=np.float32)
        kh, kw, inputs, filters = kernel.shape  # (kh, kw, in_channels, filters)
        if index == 0 and inputs == 3:
            figure = draw_rgb_kernels(kernel, name)
            caption = (f"Kernel weights of {name}, the first conv layer: each of its {filters} "
                       f"{kh}×{kw} filters split into its red, green and blue weights, then as an "
                       "RGB composite; one min-max scale for the whole layer.")
        else:
            figure = draw_filter_grid(kernel, name)
            caption = (f"Kernel weights of {name}: each of its {filters} {kh}×{kw} filters as the "
                       f"mean over its {inputs} input channels; red positive, blue negative, one "
                       "scale for the whole layer.")
        figures.append(save(ctx, figure, f"kernels_{safe_name(name)}", caption, progress))
    return figures


def save_activation_figures(ctx: StageContext, model: keras.Model, layers: Sequence[str],
                            image_set: Any, chosen: Sequence[Prediction], classes: Sequence[str],
                            progress: Progress) -> list[ExplainedImage]:
    """One figure per chosen image: the feature maps of every conv layer."""
    if not chosen:
        return []
    pixels = pixels_of(image_set, [p.path for p in chosen])  # (N, S, S, 3) uint8
    per_layer = feature_maps(model, layers, pixels)  # per layer (N, h, w, channels)
    images = []
    for i, p in enumerate(chosen):
        true, predicted = classes[p.true_id], classes[p.predicted_id]
        outcome = "classified correctly" if p.right else f"misclassified as {predicted}"
        figure = draw_activation_maps(pixels[i], [(name, maps[i]) for name, maps in
                                                  zip(layers, per_layer, strict=True)],
                                      f"true {true}, predicted {predicted}, "
                                      f"P(true) = {p.probability_of(p.true_id):.2f}")
        caption = (f"Activation maps of every conv layer for a test image of a {true}, "
                   f"{outcome} (probability of the true class "
                   f"{p.probability_of(p.true_id):.2f}); per layer the (at most) {MAX_MAPS} most "
                   "active feature maps, each on its own scale.")
        item = explained_image(p, classes)
        item.figure = save(ctx, figure, f"activations_{i + 1:02d}", caption, progress)
        images.append(item)
    return images


def save_gradcam_figures(ctx: StageContext, model: keras.Model, layers: Sequence[str],
                         pixels: np.ndarray, shown: Sequence[Prediction], classes: Sequence[str],
                         progress: Progress) -> tuple[list[Figure], list[Figure]]:
    """Grad-CAM per conv layer on the shown mistakes: one figure explaining the predicted class,
    one the true class (rows = images), and one figure per image with both rows."""
    predicted = gradcam_maps(model, pixels, layers, [p.predicted_id for p in shown])
    true = gradcam_maps(model, pixels, layers, [p.true_id for p in shown])
    labels = [row_label(p, classes) for p in shown]
    score_text = (f"scored by the logit z of P({classes[1]}) for {classes[1]} and by −z for "
                  f"{classes[0]}, which gives the maps of p and 1 − p")
    overview = []
    for which, maps in (("predicted", predicted), ("true", true)):
        figure = draw_heatmap_grid(pixels, [(name, maps[name]) for name in layers], labels,
                                   f"Grad-CAM, explaining the {which} class")
        meaning = ("the regions that made the model choose the wrong class" if which == "predicted"
                   else "where the model still saw evidence for the right class")
        caption = (f"Grad-CAM of every conv layer ({', '.join(layers)}) on the {len(shown)} most "
                   f"confidently misclassified test images, explaining the {which} class "
                   f"({score_text}): red marks {meaning}.")
        overview.append(save(ctx, figure, f"gradcam_{which}", caption, progress))
    per_image = []
    for i, p in enumerate(shown):
        true_name, predicted_name = classes[p.true_id], classes[p.predicted_id]
        rows = [f"explaining\npredicted: {predicted_name}", f"explaining\ntrue: {true_name}"]
        both = np.stack([pixels[i], pixels[i]])  # (2, S, S, 3): the same image on both rows
        columns = [(name, np.stack([predicted[name][i], true[name][i]])) for name in layers]
        figure = draw_heatmap_grid(both, columns, rows)
        caption = (f"Grad-CAM of every conv layer for the misclassified test image number {i + 1}: "
                   f"a {true_name} predicted as {predicted_name} (probability of the true class "
                   f"{p.probability_of(p.true_id):.2f}). Top row explains the predicted class, "
                   "bottom row the true class.")
        per_image.append(save(ctx, figure, f"gradcam_image_{i + 1:02d}", caption, progress))
    return overview, per_image


def save_method_figure(ctx: StageContext, model: keras.Model, layer: str, pixels: np.ndarray,
                       shown: Sequence[Prediction], classes: Sequence[str], seed: int,
                       progress: Progress) -> Figure:
    """Grad-CAM, Grad-CAM++, Score-CAM and SmoothGrad of the predicted class, side by side."""
    maps = method_maps(model, pixels, layer, [p.predicted_id for p in shown], seed)
    figure = draw_heatmap_grid(pixels, maps, [row_label(p, classes) for p in shown],
                               f"Four explanations of the predicted class at {layer}")
    channels = int(model.get_layer(layer).output.shape[-1])
    caption = (f"Four explanations of the predicted (wrong) class for the {len(shown)} most "
               f"confidently misclassified test images: Grad-CAM, Grad-CAM++ and Score-CAM at the "
               f"last conv layer {layer} (Score-CAM masks the image with the "
               f"{min(SCORECAM_MAX_N, channels)} feature maps of highest variance), and "
               f"SmoothGrad on the pixels ({SMOOTHGRAD_SAMPLES} copies with noise of "
               f"{SMOOTHGRAD_NOISE:g} × the pixel range).")
    return save(ctx, figure, f"methods_{safe_name(layer)}", caption, progress)


def save_gallery(ctx: StageContext, image_set: Any, mistakes: Sequence[Prediction], n_test: int,
                 classes: Sequence[str], progress: Progress) -> Figure | None:
    if not mistakes:
        return None
    shown = mistakes[:GALLERY_MAX]
    pixels = pixels_of(image_set, [p.path for p in shown])
    figure = draw_gallery(pixels, [row_label(p, classes) for p in shown])
    some = f"the {len(shown)} most confident of" if len(shown) < len(mistakes) else "all"
    caption = (f"Misclassified test images, {some} {len(mistakes)} mistakes on {n_test} test "
               "images, most confident first: true and predicted class and the probability the "
               "model gave the true class.")
    return save(ctx, figure, "gallery", caption, progress)


# --- chimuf predict --explain ------------------------------------------------------------------


def explain_files(model_path: Path, files: list[Path], outdir: Path, audit_cfg: AuditConfig,
                  console: Console) -> list[ExplainedFile]:
    """One Grad-CAM overlay PNG per image file (last conv layer, predicted class) in `outdir`.

    A file that cannot be read is reported by name and reason and the others are still
    explained; the returned list follows the order of `files`.
    """
    from chimuf.data.imagefile import load_rgb, model_array

    model = modelfile.load_model(model_path)
    classes = modelfile.read_classes(model_path) or ["0", "1"]  # as `chimuf predict` names them
    layer = conv_layers(model, model_path)[-1]
    size = modelfile.input_size(model)
    results: list[ExplainedFile | None] = [None] * len(files)
    readable: list[int] = []
    arrays = []
    for index, file in enumerate(files):
        try:
            arrays.append(model_array(load_rgb(file, audit_cfg), size))  # (S, S, 3) uint8
        except DataError as exc:
            console.warn(f"not explained: {exc}")  # the message names the file
            results[index] = ExplainedFile(str(file), "", "", math.nan, str(exc))
            continue
        readable.append(index)
    if readable:
        outdir.mkdir(parents=True, exist_ok=True)
        pixels = np.stack(arrays)  # (N, S, S, 3) uint8
        # The saved model's own probabilities, as `chimuf predict` prints them; the heatmaps
        # from its float32 copy.
        probability = model.predict(pixels.astype(np.float32), verbose=0).reshape(-1)  # (N,)
        predicted = [int(p > THRESHOLD) for p in probability]
        heat = gradcam_maps(logit_model(model), pixels, [layer], predicted)[layer]  # (N, S, S)
        names = output_names([files[i] for i in readable])
        for k, index in enumerate(readable):
            confidence = float(probability[k] if predicted[k] else 1.0 - probability[k])
            label = f"predicted {classes[predicted[k]]}\np = {confidence:.2f}"
            figure = draw_heatmap_grid(pixels[k: k + 1], [(f"Grad-CAM {layer}", heat[k: k + 1])],
                                       [label])
            target = save_figure(figure, outdir / names[k])
            results[index] = ExplainedFile(str(files[index]), str(target), classes[predicted[k]],
                                           confidence)
        console.info(f"{len(readable)} Grad-CAM overlay(s) written to {outdir}")
    return [r for r in results if r is not None]


def output_names(files: Sequence[Path]) -> list[str]:
    """`<stem>_gradcam.png` with only safe characters; a repeated stem gets -2, -3, ..."""
    names, seen = [], set()
    for file in files:
        stem = safe_name(Path(file).stem) or "image"
        name, n = f"{stem}_gradcam.png", 1
        while name in seen:
            n += 1
            name = f"{stem}-{n}_gradcam.png"
        seen.add(name)
        names.append(name)
    return names


def safe_name(text: str) -> str:
    """Letters, digits, '.', '_' and '-' only: safe on every file system and in a report."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80]
