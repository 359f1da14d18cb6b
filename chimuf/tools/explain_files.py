"""`chimuf predict MODEL IMAGE... --explain OUTDIR`: one Grad-CAM overlay per image file.

The last conv layer's Grad-CAM of the predicted class, over the image, with the class and its
probability under it; files are read as `chimuf predict` reads them (chimuf.ml.modelfiles.predictor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import DataError
from chimuf.core.files import safe_name
from chimuf.data.imagefile import load_rgb, model_array
from chimuf.ml.gradcam import conv_layers, gradcam_maps, logit_model
from chimuf.ml.modelfiles.predictor import load_classifier, probabilities_of
from chimuf.ml.plots.common import save_figure
from chimuf.ml.plots.explain_plots import draw_heatmap_grid

if TYPE_CHECKING:
    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console


@dataclass
class ExplainedFile:
    """One file of `chimuf predict --explain`: its overlay, or why there is none."""

    path: str  # the input file as given
    output: str  # the Grad-CAM overlay PNG written; "" when the file could not be read
    label: str  # the predicted class explained; "" when the file could not be read
    probability: float  # the model's probability of `label`; NaN when the file could not be read
    error: str = ""


def explain_files(model_path: Path, files: list[Path], outdir: Path, audit_cfg: AuditConfig,
                  console: Console, threshold: float | None = None,
                  limits: ModelFilesConfig | None = None) -> list[ExplainedFile]:
    """One Grad-CAM overlay PNG per image file (last conv layer, predicted class) in `outdir`.

    A file that cannot be read is reported by name and reason and the others are still
    explained; the returned list follows the order of `files`.
    """
    if outdir.exists() and not outdir.is_dir():
        raise DataError(f"`--explain {outdir}` is a file; pass a folder for the Grad-CAM overlays "
                        "(it is made if it does not exist)")
    classifier = load_classifier(model_path, threshold, limits=limits)
    model = classifier.model
    classes = classifier.classes or ["0", "1"]  # as `chimuf predict` names them
    layer = conv_layers(model, model_path)[-1]
    size = classifier.image_size
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
        probability = probabilities_of(model, pixels)  # (N,)
        predicted = [classifier.decide(p) for p in probability]
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
