"""`chimuf evaluate MODEL DIR`: the evaluation's metrics for any saved model on any labelled folder.

DIR has one sub-folder per class, named as the model's classes (its `<model>.classes.json`), or,
without that file, exactly two sub-folders taken in sorted order (the Keras convention). Files the
audit rejects are listed with their reasons and skipped; the rest are scored as the study scores
them (chimuf.ml.modelfiles.predictor) and measured as the evaluate stage measures (chimuf.stats.metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.config import EvaluateConfig
from chimuf.core.console import printable
from chimuf.core.errors import DataError
from chimuf.core.results import DEFAULT_THRESHOLD, ClassMetrics, Interval, dumps
from chimuf.data import sources
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import load_classifier, score_files
from chimuf.stats import intervals, metrics

if TYPE_CHECKING:
    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console


@dataclass
class SkippedFile:
    path: str  # relative to the folder
    reason: str


@dataclass
class FolderEvaluation:
    model: str
    data_dir: str
    classes: list[str]  # index = label id; the model's sigmoid gives P(classes[1])
    classes_from: str  # "model" (<model>.classes.json) or "folder" (sorted sub-folder names)
    n_images: int  # images evaluated (skipped files not counted)
    threshold: float
    threshold_source: str  # where the threshold came from, in words
    accuracy: float
    accuracy_interval: Interval
    roc_auc: float  # NaN (null in JSON) when the folder holds only one class's images
    roc_auc_interval: Interval
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted, in `classes` order
    per_class: list[ClassMetrics]
    macro_f1: float
    expected_calibration_error: float
    skipped: list[SkippedFile]  # files the audit rejects (and entries not walked), with reasons
    balanced_accuracy: float = float("nan")  # mean of the two recalls; NaN with one class
    balanced_accuracy_interval: Interval | None = None
    average_precision: float = float("nan")  # of classes[1]; NaN without any
    average_precision_interval: Interval | None = None
    brier_score: float = float("nan")
    brier_interval: Interval | None = None
    confidence: float = 0.95  # of every interval above


def evaluate_folder(model_path: Path, data_dir: Path, audit_cfg: AuditConfig, console: Console,
                    threshold: float | None = None, ensemble: Sequence[Path] = (),
                    flips: bool = False, limits: ModelFilesConfig | None = None) -> FolderEvaluation:
    """Metrics of the model at `model_path` on a labelled folder (one sub-folder per class).

    Files the audit rejects are skipped and listed with their reasons; the rest are evaluated,
    decided at the model's own threshold (its sidecar's) or at `threshold`; with `ensemble` and
    `flips`, by the mean probability of several models and of each image and its mirror.
    """
    classifier = load_classifier(model_path, threshold, ensemble, flips, limits)
    root = sources.check_folder(data_dir)
    listing = sources.list_folder(root)
    classes, source = folder_classes(model_path, classifier.classes, root, listing.classes, console)
    files = [root / rel for rel, _ in listing.files]
    scored = score_files(classifier, files, audit_cfg, console, description="evaluating")

    skipped = [SkippedFile("", note) for note in listing.skipped]  # entries the audit did not walk
    labels, probabilities = [], []
    for (rel, label), item in zip(listing.files, scored, strict=True):
        if item.probability is None:
            skipped.append(SkippedFile(rel, item.error))
            continue
        labels.append(classes.index(label))
        probabilities.append(item.probability)
    if not labels:
        example = f" (e.g. {skipped[-1].path}: {skipped[-1].reason})" if skipped else ""
        raise DataError(f"no usable image in `{root}`: all {len(files)} file(s) were rejected"
                        f"{example}; add readable JPEG/PNG/BMP/GIF/WebP images")
    return folder_metrics(model_path, root, classes, source, np.array(labels), np.array(probabilities),
                          skipped, classifier.threshold, classifier.threshold_source)


def folder_classes(model_path: Path, saved: list[str] | None, root: Path, found: list[str],
                   console: Console) -> tuple[list[str], str]:
    """The model's class names (`saved`, from its sidecar) and where they came from; the folder must
    hold exactly those."""
    if saved is not None:
        if sorted(found) != sorted(saved):
            raise DataError(
                f"folder `{root}` has class folders {found}; model `{model_path}` was trained on "
                f"{saved} (from {modelfile.classes_path(model_path).name}). Name the sub-folders "
                "as the model's classes."
            )
        return list(saved), "model"
    if len(found) != 2:
        raise DataError(
            f"folder `{root}` has {len(found)} class folder(s) {found}; a binary model needs exactly "
            "two, one per class"
        )
    console.warn(f"no `{modelfile.classes_path(model_path).name}` beside the model: assuming its "
                 f"classes are the folder's, in sorted order {found} (the Keras convention), so "
                 f"the model's output is P({found[1]})")
    return list(found), "folder"


def folder_metrics(model_path: Path, root: Path, classes: list[str], source: str, labels: np.ndarray,
                   probabilities: np.ndarray, skipped: list[SkippedFile],
                   threshold: float = DEFAULT_THRESHOLD,
                   threshold_source: str = "the default") -> FolderEvaluation:
    defaults = EvaluateConfig()
    at_half = metrics.metrics_at(labels, probabilities, threshold, classes, rule=f"fixed at {threshold:g}")
    spread = intervals.metric_intervals(labels, probabilities, threshold=threshold,
                                        samples=defaults.bootstrap_samples,
                                        confidence=defaults.confidence, seed=0)
    per_class = metrics.with_intervals(at_half.per_class, spread.f1, spread.precision, spread.recall)
    return FolderEvaluation(
        model=str(model_path),
        data_dir=str(root),
        classes=classes,
        classes_from=source,
        n_images=len(labels),
        threshold=threshold,
        threshold_source=threshold_source,
        accuracy=at_half.accuracy,
        accuracy_interval=spread.accuracy,
        roc_auc=metrics.roc_auc(labels, probabilities),
        roc_auc_interval=spread.roc_auc,
        confusion_matrix=at_half.confusion_matrix,
        per_class=per_class,
        macro_f1=metrics.macro_f1(per_class),
        expected_calibration_error=metrics.calibration(labels, probabilities,
                                                       defaults.calibration_bins).expected_calibration_error,
        skipped=skipped,
        balanced_accuracy=metrics.balanced_accuracy(labels, metrics.predict_labels(probabilities, threshold)),
        balanced_accuracy_interval=spread.balanced_accuracy,
        average_precision=metrics.average_precision(labels, probabilities),
        average_precision_interval=spread.average_precision,
        brier_score=metrics.brier_score(labels, probabilities),
        brier_interval=spread.brier,
        confidence=defaults.confidence,
    )


def format_folder_evaluation(evaluation: FolderEvaluation, as_json: bool) -> str:
    """One JSON object, or a short text report for people."""
    if as_json:
        return dumps(evaluation)
    e = evaluation
    cm = e.confusion_matrix
    width = max(len(c) for c in e.classes) + 2
    lines = [
        f"model {e.model} on {e.data_dir}: {e.n_images} images, {len(e.skipped)} skipped",
        f"accuracy {e.accuracy:.3f} [{e.accuracy_interval.low:.3f}, {e.accuracy_interval.high:.3f}]"
        f"   ROC AUC {format_number(e.roc_auc)}   macro F1 {e.macro_f1:.3f}",
        f"balanced accuracy {with_interval(e.balanced_accuracy, e.balanced_accuracy_interval)}"
        f"   average precision {with_interval(e.average_precision, e.average_precision_interval)}"
        f"   Brier {with_interval(e.brier_score, e.brier_interval)}",
        f"intervals at {e.confidence:.0%}: Wilson for accuracy, precision and recall; BCa bootstrap for "
        "the rest",
        f"decided at threshold {e.threshold:g} ({e.threshold_source})",
        "",
        "confusion matrix (rows = true class, columns = predicted):",
        f"{'':<{width}}" + "".join(f"{c:>{width}}" for c in e.classes),
    ]
    for i, label in enumerate(e.classes):
        lines.append(f"{label:<{width}}" + "".join(f"{cm[i][j]:>{width}}" for j in range(2)))
    lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>8}{'F1':>7}{'support':>9}"]
    for row in e.per_class:
        lines.append(f"{row.label:<{width}}{row.precision:>10.3f}{row.recall:>8.3f}{row.f1:>7.3f}"
                     f"{row.support:>9}")
    if e.skipped:
        lines += ["", "skipped:"] + [f"  {s.path}: {s.reason}" if s.path else f"  {s.reason}"
                                     for s in e.skipped]
    return "\n".join(printable(line) for line in lines)  # names from the folder, shown escaped


def with_interval(value: float, interval: Interval | None) -> str:
    """"0.912 [0.890, 0.931]", or "n/a" for an undefined number."""
    if value != value:
        return "n/a"
    if interval is None or interval.low != interval.low:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def format_number(value: float) -> str:
    return "undefined (one class only)" if value != value else f"{value:.3f}"
