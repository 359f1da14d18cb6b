"""Error analysis (paper section 9): what the final model learned, and where it looks when wrong.

Five views of the final model, each saved as figures with captions for the report:

1. kernel weights of every conv layer (paper 9.1);
2. activation maps of every conv layer for a few test images, right and wrong, of both classes
   (paper 9.2);
3. Grad-CAM of every conv layer on the misclassified test images, most confident mistakes first,
   explaining the predicted (wrong) class and then the true class (paper 9.3, figure 12);
4. Grad-CAM, Grad-CAM++, Score-CAM and SmoothGrad side by side at the last conv layer;
5. a gallery of the most confident mistakes with the probability the model gave the true class
   under each (the report shows it in place of a table of file names), and every mistake in
   explain/misclassified.csv.

Which image is right or wrong comes from the evaluate stage's Predictions, so this stage agrees
with the reported confusion matrix by construction. The maps themselves: chimuf.ml.gradcam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.errors import DataError, ModelError
from chimuf.core.files import atomic_write_text, csv_text, safe_name
from chimuf.core.results import ExplainedImage, ExplainOutcome, Figure, Prediction
from chimuf.data.cache import load_images
from chimuf.ml.gradcam import (
    SCORECAM_MAX_N,
    SMOOTHGRAD_NOISE,
    SMOOTHGRAD_SAMPLES,
    conv_layers,
    feature_maps,
    gradcam_maps,
    logit_model,
    method_maps,
)
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.plots.common import literal, save_figure
from chimuf.ml.plots.explain_plots import (
    GALLERY_COLUMNS,
    MAX_MAPS,
    draw_activation_maps,
    draw_filter_grid,
    draw_gallery,
    draw_heatmap_grid,
    draw_rgb_kernels,
)

if TYPE_CHECKING:
    from pathlib import Path

    import keras

    from chimuf.core.config import ExplainConfig, ModelFilesConfig
    from chimuf.core.console import Progress
    from chimuf.core.engine import StageContext
    from chimuf.core.results import CacheOutcome, EvaluateOutcome, Predictions, SplitOutcome, TrainingOutcome
    from chimuf.data.cache import ImageSet

GALLERY_MAX = 6 * GALLERY_COLUMNS  # mistakes shown in the gallery, most confident first


def explain_errors(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome,
                   final: TrainingOutcome, evaluation: EvaluateOutcome, cfg: ExplainConfig,
                   seed: int, limits: ModelFilesConfig | None = None) -> ExplainOutcome:
    """Kernels, activation maps, Grad-CAM per conv layer and a gallery of the test mistakes.

    With no mistakes the Grad-CAM, method and gallery figures are absent (`n_misclassified` is
    0); kernels and activation maps are still drawn. The model is opened within `limits`.
    """
    classes = list(evaluation.classes)
    check_in_test_split(evaluation.predictions, split)
    predictions = evaluation.predictions.items()
    model = logit_model(modelfile.load_model(ctx.run_dir / final.model_path, limits, ctx.console))
    layers = conv_layers(model, final.model_path)
    check_input_size(model, cache.image_size, final.model_path)
    image_set = load_images(cache)

    mistakes = evaluation.predictions.mistakes()
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
    mistakes_csv = ctx.dir / "misclassified.csv"
    atomic_write_text(mistakes_csv, mistakes_table(explained))
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
        threshold=evaluation.predictions.threshold,
        n_gallery=min(GALLERY_MAX, len(mistakes)),
        misclassified_csv=ctx.rel(mistakes_csv),
    )


# --- inputs ------------------------------------------------------------------------------------


def check_in_test_split(predictions: Predictions, split: SplitOutcome) -> None:
    """Every explained image must be a test image: explaining a training image as a 'test
    mistake' would mislead the report (the evaluation and the split must be of the same run)."""
    test = set(split.test)
    outside = [path for path in predictions.paths if path not in test]
    if outside:
        raise DataError(
            f"the evaluate stage's predictions list {len(outside)} image(s) outside the test split, "
            f"e.g. `{outside[0]}`; rerun the evaluate stage on this run's split"
        )


def check_input_size(model: keras.Model, image_size: int, where: str | Path) -> None:
    size = modelfile.input_size(model)
    if size != image_size:
        raise ModelError(f"model `{where}` takes {size}-pixel images but the image cache holds "
                         f"{image_size}-pixel ones; rerun the final training")


def pixels_of(image_set: ImageSet, paths: Sequence[str]) -> np.ndarray:
    """uint8 (N, S, S, 3): the cached pixels of `paths`, in that order."""
    rows = np.asarray(image_set.rows(list(paths)), dtype=np.int64)
    return np.asarray(image_set.images[rows], dtype=np.uint8)


# --- which images ---------------------------------------------------------------------------------


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
    return literal(f"true {classes[p.true_id]}\npredicted {classes[p.predicted_id]}\n"
                   f"P(true) = {p.probability_of(p.true_id):.2f}")


def mistakes_table(mistakes: Sequence[ExplainedImage]) -> str:
    """CSV of every mistake, most confident first: rank (as in the gallery), path, true and
    predicted class, the probability the model gave the true class."""
    return csv_text(["rank", "path", "true_label", "predicted_label", "probability_true"],
                    ([rank, m.path, m.true_label, m.predicted_label, f"{m.probability_true:.8f}"]
                     for rank, m in enumerate(mistakes, start=1)))


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
                            image_set: ImageSet, chosen: Sequence[Prediction], classes: Sequence[str],
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
                                      literal(f"true {true}, predicted {predicted}, "
                                              f"P(true) = {p.probability_of(p.true_id):.2f}"))
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


def save_gallery(ctx: StageContext, image_set: ImageSet, mistakes: Sequence[Prediction], n_test: int,
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
