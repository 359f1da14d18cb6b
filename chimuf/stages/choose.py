"""The model to take home: one of the beyond stage's candidates, by a rule fixed before any test
number is read.

    every candidate's validation accuracy (out-of-fold for the fold ensemble)   (beyond stage)
      → the highest wins; equal scores go to the cheaper candidate (parameters × forward passes)
      → its members (and flips) as one .keras file, its threshold chosen on its validation predictions
      → the export stage exports that file; its test numbers are the beyond row's, measured once
      → once chosen: Grad-CAM of its most confident test mistakes (its last conv layer)

The rule reads `validation_accuracy` and `cost` only, never a test number, so the choice is the
one a user would have made without the test split; the report says the rule, every candidate's
score, the choice and its test numbers (and McNemar's test against the paper's final model).
"""

from __future__ import annotations

import math
import shutil
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import StageError
from chimuf.core.files import safe_name
from chimuf.core.results import BeyondOutcome, BeyondRow, ChooseOutcome, Figure
from chimuf.data.cache import load_images
from chimuf.ml.architectures.models import float32_copy, model_precision, save_model
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import averaged_probabilities
from chimuf.stats import metrics

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import ModelFilesConfig
    from chimuf.core.engine import StageContext
    from chimuf.core.results import CacheOutcome, KFoldOutcome, SplitOutcome

RULE = ("the highest validation accuracy at threshold 0.5 (out-of-fold accuracy over train+validation "
        "for the fold ensemble, whose models trained on the validation images); equal scores go to the "
        "cheaper candidate (fewer parameters × forward passes per image); candidates without an honest "
        "score are not eligible; no test number is read")
THRESHOLD_RULE = "accuracy"  # as the evaluate stage chooses the final model's


def pick(rows: list[BeyondRow]) -> BeyondRow:
    """The candidate the rule chooses: highest validation score, then lowest cost, then first
    listed (the beyond stage lists the paper's final model first). StageError when none has a score."""
    eligible = [row for row in rows if not math.isnan(row.validation_accuracy)]
    if not eligible:
        raise StageError("no candidate has a validation score to choose by; expected at least the final "
                         "model's; rerun the beyond stage (delete RUN/beyond) and the study")
    return min(eligible, key=lambda row: (-round(row.validation_accuracy, 12), row.cost, rows.index(row)))


def choose_model(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, beyond: BeyondOutcome,
                 kfold: KFoldOutcome | None, limits: ModelFilesConfig | None = None,
                 gradcam_layer: str = "") -> ChooseOutcome:
    """Choose by RULE, write the chosen classifier as one .keras file with its validation threshold."""
    chosen = pick(beyond.rows)
    ctx.console.info(f"  by validation score: {chosen.name} ({chosen.validation_source} accuracy "
                     f"{chosen.validation_accuracy:.3f} on {chosen.validation_n} images)")
    path = ctx.dir / f"{safe_name(chosen.name)}.keras"
    members = [modelfile.load_model(ctx.run_dir / p, limits, ctx.console) for p in chosen.model_paths]
    if len(members) == 1 and not chosen.flips:
        shutil.copyfile(ctx.run_dir / chosen.model_paths[0], path)  # the very file, byte for byte
    else:
        save_model(combined(members, chosen.flips), path)
    threshold = chosen_threshold(cache, split, members, chosen, kfold)
    modelfile.write_classes(path, list(split.classes), threshold, metrics.describe_rule(THRESHOLD_RULE))
    figure = mistakes_gradcam(ctx, cache, split, members, chosen, gradcam_layer)
    return ChooseOutcome(RULE, list(beyond.rows), chosen.name, ctx.rel(path), threshold,
                         metrics.describe_rule(THRESHOLD_RULE), modelfile.file_sha256(path), figure)


def chosen_threshold(cache: CacheOutcome, split: SplitOutcome, members: list[keras.Model],
                     chosen: BeyondRow, kfold: KFoldOutcome | None) -> float:
    """The threshold that maximises accuracy on the predictions the candidate was chosen by."""
    if chosen.validation_source == "out-of-fold" and kfold is not None and kfold.predictions is not None:
        oof = kfold.predictions
        return metrics.choose_threshold(np.asarray(oof.labels), np.asarray(oof.probabilities), THRESHOLD_RULE)
    images = load_images(cache)
    rows = images.rows(split.validation)
    pixels = np.asarray(images.images[rows], dtype=np.uint8)
    p = averaged_probabilities(members, pixels, chosen.flips)
    return metrics.choose_threshold(np.asarray(images.labels)[rows], p, THRESHOLD_RULE)


def mistakes_gradcam(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome,
                     members: list[keras.Model], chosen: BeyondRow, layer: str = "",
                     shown: int = 8) -> Figure | None:
    """Grad-CAM at `layer` (where the model has it, else its last Conv2D) of the chosen model (its
    first member for an ensemble) on its most confident test mistakes, after the choice was made;
    None without mistakes or such a layer."""
    from chimuf.ml.architectures.models import conv_layer_names
    from chimuf.ml.gradcam import gradcam_maps, logit_model
    from chimuf.ml.plots.common import save_figure
    from chimuf.ml.plots.explain_plots import draw_heatmap_grid

    named = [layer] if layer and layer in [each.name for each in members[0].layers] else []
    layers = named or conv_layer_names(members[0])
    images = load_images(cache)
    rows = images.rows(split.test)
    pixels = np.asarray(images.images[rows], dtype=np.uint8)
    labels = np.asarray(images.labels)[rows]
    p = averaged_probabilities(members, pixels, chosen.flips)
    predicted = metrics.predict_labels(p)
    wrong = np.flatnonzero(predicted != labels)
    if not layers or not len(wrong):
        return None
    p_true = np.where(labels[wrong] == 1, p[wrong], 1 - p[wrong])
    worst = wrong[np.argsort(p_true, kind="stable")[:shown]]
    maps = gradcam_maps(logit_model(members[0]), pixels[worst], [layers[-1]], predicted[worst].tolist())
    names = list(split.classes)
    captions = [f"{names[labels[i]]} as {names[predicted[i]]}" for i in worst]
    figure = draw_heatmap_grid(pixels[worst], [(layers[-1], maps[layers[-1]])], captions,
                               f"{chosen.name}: Grad-CAM of its mistakes")
    path = save_figure(figure, ctx.dir / "gradcam_mistakes.png")
    where = "the layer named in candidates.gradcam_layer" if named else "its last convolution"
    return Figure(ctx.rel(path), f"Grad-CAM at {layers[-1]}, {where}, of the model taken home "
                                 f"({chosen.name}), on its {len(worst)} most confident test mistakes "
                                 f"(of {len(wrong)}), explaining the class it predicted.")


def combined(members: list[keras.Model], flips: bool) -> keras.Model:
    """One model whose output is the mean of `members`' on each image (and on its left-right mirror
    with `flips`), built from Keras layers only, so it loads in safe mode and exports to TFLite; in
    float32 (a member trained in mixed bfloat16 keeps its weights, which are float32 anyway)."""
    import keras

    members = [float32_copy(member) if model_precision(member) != "float32" else member
               for member in members]
    size = modelfile.input_size(members[0])
    inputs = keras.Input((size, size, 3), name="image")
    views = [inputs, mirrored(inputs, size)] if flips else [inputs]
    outputs = []
    for index, member in enumerate(members):
        member.name = f"member_{index + 1}"  # fold models share a name; a Functional model may not
        outputs += [member(view) for view in views]
    output = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="mean", dtype="float32")(outputs)
    return keras.Model(inputs, output, name="take_home")


def mirrored(inputs: keras.KerasTensor, size: int) -> keras.KerasTensor:
    """The image flipped left-right, as a fixed permutation matrix over its columns (a Dense layer
    with 0/1 weights on the width axis: exact, and a layer every loader and converter knows)."""
    import keras

    flip = keras.layers.Dense(size, use_bias=False, trainable=False, dtype="float32", name="mirror")
    x = keras.layers.Permute((1, 3, 2), name="width_last")(inputs)  # (H, 3, W)
    x = flip(x)
    flip.set_weights([np.eye(size, dtype=np.float32)[::-1]])  # column w ← column size-1-w
    return keras.layers.Permute((1, 3, 2), name="width_back")(x)
