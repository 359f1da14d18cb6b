"""The model to take home: the choose stage's model with the threshold chosen for it, its TFLite
file, and that file quantized for small devices.

    choose/<chosen>.keras + its validation-chosen threshold (without a choice: final/final.keras and
    the evaluate stage's threshold)
      → export/<chosen>.keras with export/final.classes.json (classes, threshold, how it was chosen)
      → export/final.tflite (and the other formats of `export.formats`), each run on test images
        beside the Keras model: the largest difference of their probabilities
      → export/final.int8.tflite (`export.quantize`; int8 calibrated on validation photos)
      → every export's accuracy on the whole test split at the chosen threshold, beside the Keras
        model's: what quantizing costs, measured where it is paid

`chimuf predict RUN IMAGE...` (or `export/<chosen>.keras`) then decides at the chosen threshold by
default; the paper's metrics in the report stay at 0.5. TFLite runs on phones and small boards
(Raspberry Pi); int8 is a quarter of the float file and what microcontroller-class accelerators
(Edge TPU) run.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.results import ExportedModel, ExportOutcome
from chimuf.data.cache import load_images
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.export import (
    QUANTIZABLE,
    ExportCheck,
    accuracy,
    agreement,
    export_model,
    run_exported,
)
from chimuf.ml.modelfiles.predictor import probabilities_of

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
    from chimuf.data.cache import ImageSet


def export_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, final: TrainingOutcome,
                 evaluation: EvaluateOutcome, cfg: ExportConfig,
                 limits: ModelFilesConfig | None = None,
                 choice: ChooseOutcome | None = None) -> ExportOutcome:
    """Copy the model to take home (the choose stage's, else the final model) with its threshold
    chosen on validation, export it as `cfg.formats` (the TFLite one quantized too, per
    `cfg.quantize`), check each and measure each on the test split; the model is opened within
    `limits` (the study's model_files)."""
    chosen = (evaluation.at_validation_threshold if choice is None
              else SimpleNamespace(threshold=choice.threshold, rule=choice.threshold_rule))
    source = ctx.run_dir / (final.model_path if choice is None else choice.model_path)
    model_path = ctx.dir / source.name
    shutil.copyfile(source, model_path)
    sidecar = modelfile.write_classes(model_path, list(split.classes), chosen.threshold, chosen.rule)
    images = load_images(cache)
    samples = spread(images, split.test, cfg.check_images)  # (N, S, S, 3), over both classes
    test_rows = images.rows(split.test)
    test = (images.images[test_rows], images.labels[test_rows])
    keras_p = probabilities_of(modelfile.load_model(model_path, limits), np.asarray(test[0], dtype=np.uint8))
    calibration = (spread(images, split.validation, cfg.calibration_images) if cfg.quantize == "int8"
                   else None)
    exports = []
    for fmt in cfg.formats:
        for quantize in ("", cfg.quantize) if fmt in QUANTIZABLE and cfg.quantize else ("",):
            check = export_model(model_path, fmt, ctx.dir, samples, limits, quantize=quantize,
                                 representative=calibration)
            exports.append(measured(ctx, check, test, keras_p, chosen.threshold))
    return ExportOutcome(ctx.rel(model_path), ctx.rel(sidecar), chosen.threshold, chosen.rule, exports,
                         test_accuracy=accuracy(keras_p, test[1], chosen.threshold),
                         test_images=len(test[1]),
                         calibration_images=0 if calibration is None else len(calibration))


def spread(images: ImageSet, paths: list[str], count: int) -> np.ndarray:
    """Up to `count` of `paths`' images, every k-th (so both classes are in), uint8 (n, S, S, 3)."""
    step = max(1, len(paths) // max(count, 1))
    return np.asarray(images.images[images.rows(paths[::step][:count])], dtype=np.uint8)


def measured(ctx: StageContext, check: ExportCheck, test: tuple[np.ndarray, np.ndarray],
             keras_p: np.ndarray, threshold: float) -> ExportedModel:
    """The export's record: its check, and its accuracy on the test split beside the Keras model."""
    got, _ = run_exported(check.format, check.path, np.asarray(test[0], dtype=np.uint8))
    name = check.format + (f" {check.quantization}" if check.quantization else "")
    score = accuracy(got, test[1], threshold)
    ctx.console.info(f"  {name}: {ctx.rel(check.path)}, {check.size_bytes / 2**20:.2f} MiB; largest "
                     f"difference from the Keras model on {check.images_checked} test images "
                     f"{check.max_abs_difference:.1e}; test accuracy {100 * score:.1f}%")
    return ExportedModel(check.format, ctx.rel(check.path), check.size_bytes, check.images_checked,
                         check.max_abs_difference, check.max_abs_difference_saved,
                         quantization=check.quantization, test_accuracy=score,
                         test_agreement=agreement(got, keras_p, threshold), runtime=check.runtime)
