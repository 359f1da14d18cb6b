"""The model to take home: the choose stage's model with the threshold chosen for it, and its TFLite file.

    choose/<chosen>.keras + its validation-chosen threshold (without a choice: final/final.keras and
    the evaluate stage's threshold)
      → export/<chosen>.keras with export/final.classes.json (classes, threshold, how it was chosen)
      → export/final.tflite (and the other formats of `export.formats`), each run on test images
        beside the Keras model: the largest difference of their probabilities

`chimuf predict RUN IMAGE...` (or `export/<chosen>.keras`) then decides at the chosen threshold by
default; the paper's metrics in the report stay at 0.5. TFLite runs on phones and small boards (Raspberry Pi).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.results import ExportedModel, ExportOutcome
from chimuf.data.cache import load_images
from chimuf.ml import modelfile
from chimuf.ml.export import export_model

if TYPE_CHECKING:
    from chimuf.core.config import ExportConfig, ModelFilesConfig
    from chimuf.core.engine import StageContext
    from chimuf.core.results import (
        CacheOutcome,
        ChooseOutcome,
        EvaluateOutcome,
        SplitOutcome,
        TrainingOutcome,
    )


def export_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, final: TrainingOutcome,
                 evaluation: EvaluateOutcome, cfg: ExportConfig,
                 limits: ModelFilesConfig | None = None,
                 choice: ChooseOutcome | None = None) -> ExportOutcome:
    """Copy the model to take home (the choose stage's, else the final model) with its threshold
    chosen on validation, export it as `cfg.formats`, check each; the model is opened within
    `limits` (the study's model_files)."""
    chosen = (evaluation.at_validation_threshold if choice is None
              else SimpleNamespace(threshold=choice.threshold, rule=choice.threshold_rule))
    source = ctx.run_dir / (final.model_path if choice is None else choice.model_path)
    model_path = ctx.dir / source.name
    shutil.copyfile(source, model_path)
    sidecar = modelfile.write_classes(model_path, list(split.classes), chosen.threshold, chosen.rule)
    images = load_images(cache)
    step = max(1, len(split.test) // max(cfg.check_images, 1))
    rows = images.rows(split.test[::step][: cfg.check_images])  # spread over both classes
    samples = np.asarray(images.images[rows], dtype=np.uint8)  # (N, S, S, 3)
    exports = []
    for fmt in cfg.formats:
        check = export_model(model_path, fmt, ctx.dir, samples, limits)
        ctx.console.info(f"  {fmt}: {ctx.rel(check.path)}, {check.size_bytes / 2**20:.1f} MiB; largest "
                         f"difference from the Keras model on {check.images_checked} test images "
                         f"{check.max_abs_difference:.1e}")
        exports.append(ExportedModel(fmt, ctx.rel(check.path), check.size_bytes, check.images_checked,
                                     check.max_abs_difference, check.max_abs_difference_saved))
    return ExportOutcome(ctx.rel(model_path), ctx.rel(sidecar), chosen.threshold, chosen.rule, exports)
