"""Evaluation of the final model on the test split (paper section 7), and of any model on any folder.

The paper reports a confusion matrix, precision / recall / F1 / support per class, accuracy and
the ROC curve with its AUC on the test split. This stage computes the same, plus what a reader
needs to trust them:

    final model ─predict (fixed order)─▶ P(classes[1]) of every validation and test image
        → predictions CSVs (every number below can be recomputed from them)
        → accuracy, confusion matrix, per-class metrics, ROC AUC at threshold 0.5
          ↳ checked against Keras' own evaluate()
        → bootstrap intervals (accuracy, F1 per class, AUC)
        → a threshold chosen on the validation split only, and the test metrics at it
        → calibration (ECE, reliability diagram)
        → McNemar: final vs model 3 with augmentation; each model with vs without augmentation
        → accuracy on the test images that have no exact or near duplicate in train+validation

`chimuf evaluate MODEL DIR` (`evaluate_folder`) runs the same metrics on any labelled folder.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.config import EvaluateConfig
from chimuf.core.engine import atomic_write_text
from chimuf.core.errors import DataError, StageError
from chimuf.core.results import (
    ClassMetrics,
    EvaluateOutcome,
    Figure,
    Interval,
    McNemarTest,
    dumps,
)
from chimuf.ml import metrics, modelfile

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AuditConfig, TrainConfig
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.core.results import (
        AuditOutcome,
        CacheOutcome,
        SplitOutcome,
        TrainingOutcome,
        TrainOutcome,
    )

THRESHOLD_RULE = "accuracy"  # how the validation threshold is chosen (see metrics.choose_threshold)


def evaluate_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, audit: AuditOutcome,
                   final: TrainingOutcome, train: TrainOutcome, cfg: EvaluateConfig,
                   train_cfg: TrainConfig, seed: int) -> EvaluateOutcome:
    """Every test-split metric of the final model, its figures and its predictions CSVs."""
    from chimuf.data.cache import load_images

    classes = list(split.classes)
    images = load_images(cache)
    val_rows, test_rows = images.rows(split.validation), images.rows(split.test)
    y_val = np.asarray(images.labels)[val_rows]
    y_test = np.asarray(images.labels)[test_rows]
    batch = train_cfg.batch_size

    # 1. The final model's P(classes[1]) for every validation and test image, in split order.
    model = modelfile.load_model(ctx.run_dir / final.model_path)
    p_val = predict_rows(model, images, val_rows, batch)
    p_test = predict_rows(model, images, test_rows, batch)
    keras_acc = keras_accuracy(model, images, test_rows, batch)

    # 2. The paper's metrics at threshold 0.5, and the check against Keras.
    at_half = metrics.metrics_at(y_test, p_test, 0.5, classes, rule="fixed at 0.5")
    check_agreement(at_half.accuracy, keras_acc, len(test_rows))
    auc = metrics.roc_auc(y_test, p_test)

    # 3. How far those numbers could move with another test sample of the same size.
    intervals = metrics.bootstrap_intervals(y_test, p_test, threshold=0.5, samples=cfg.bootstrap_samples,
                                            confidence=cfg.confidence, seed=seed)
    per_class = with_intervals(at_half.per_class, intervals.f1)

    # 4. A threshold chosen on validation predictions only; the test metrics at it.
    threshold = metrics.choose_threshold(y_val, p_val, THRESHOLD_RULE)
    at_validation = metrics.metrics_at(y_test, p_test, threshold, classes,
                                       rule=metrics.describe_rule(THRESHOLD_RULE))

    # 5. Calibration of P(classes[1]).
    reliability = metrics.calibration(y_test, p_test, cfg.calibration_bins)

    # 6. Paired comparisons with the trainings, on the same test images.
    others = predict_trainings(ctx, train, images, test_rows, batch)
    mcnemar = paired_tests(y_test, p_test, others, train, final.name)

    # 7. Test images with no exact or near copy in train+validation.
    clean = leakage_free_mask(split, audit)  # (n_test,) bool, in split.test order
    clean_accuracy = (metrics.accuracy(y_test[clean], metrics.predict_labels(p_test[clean]))
                      if clean.any() else None)

    # 8. Files: predictions, then figures.
    predictions_csv = ctx.dir / "predictions.csv"
    atomic_write_text(predictions_csv, predictions_table(split.test, y_test, p_test, classes, others))
    validation_csv = ctx.dir / "validation_predictions.csv"
    atomic_write_text(validation_csv, predictions_table(split.validation, y_val, p_val, classes, {}))
    figures = save_figures(ctx, classes, y_test, p_test, at_half, auc, threshold, reliability)
    ctx.console.info(f"  {final.name}: test accuracy {at_half.accuracy:.3f} [{intervals.accuracy.low:.3f}, "
                     f"{intervals.accuracy.high:.3f}], ROC AUC {auc:.3f} on {len(test_rows)} images; "
                     f"{at_validation.accuracy:.3f} at the validation threshold {threshold:.3f}")

    return EvaluateOutcome(
        model=final.name,
        classes=classes,
        n_images=len(test_rows),
        accuracy=at_half.accuracy,
        accuracy_interval=intervals.accuracy,
        roc_auc=auc,
        roc_auc_interval=intervals.roc_auc,
        confusion_matrix=at_half.confusion_matrix,
        per_class=per_class,
        macro_f1=metrics.macro_f1(per_class),
        at_validation_threshold=at_validation,
        expected_calibration_error=reliability.expected_calibration_error,
        mcnemar=mcnemar,
        leakage_free_accuracy=clean_accuracy,
        leakage_free_n=int(clean.sum()),
        keras_accuracy=keras_acc,
        predictions_csv=ctx.rel(predictions_csv),
        figures=figures,
        confidence=cfg.confidence,
        bootstrap_samples=cfg.bootstrap_samples,
        validation_predictions_csv=ctx.rel(validation_csv),
    )


# --- 1. predicting -----------------------------------------------------------------------------


def predict_rows(model: keras.Model, images: Any, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """P(classes[1]) of cache rows `rows`, in that order: float64 (len(rows),)."""
    from chimuf.ml.pipeline import make_dataset

    if len(rows) == 0:
        return np.zeros(0)
    dataset = make_dataset(images.images, images.labels, rows, batch_size, shuffle=False, seed=0)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)[:, 0]


def keras_accuracy(model: keras.Model, images: Any, rows: np.ndarray, batch_size: int) -> float:
    """Accuracy as Keras' own `evaluate()` computes it: an independent check of ours."""
    import keras

    from chimuf.ml.pipeline import make_dataset

    model.compile(loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])
    dataset = make_dataset(images.images, images.labels, rows, batch_size, shuffle=False, seed=0)
    return float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])


def check_agreement(ours: float, keras_value: float, n: int) -> None:
    """Our accuracy and Keras' may differ by rounding, never by a whole image."""
    if abs(ours - keras_value) * n >= 1 - 1e-6:
        raise StageError(
            f"test accuracy {ours:.6f} from the predictions disagrees with Keras' evaluate() "
            f"({keras_value:.6f}) on {n} images: predictions and labels are misaligned. This is a "
            "bug in chimuf; please report it with the run folder."
        )


def predict_trainings(ctx: StageContext, train: TrainOutcome, images: Any, rows: np.ndarray,
                      batch_size: int) -> dict[str, np.ndarray]:
    """P(classes[1]) of each training's saved model on `rows`, by training name."""
    out = {}
    for training in train.trainings:
        if not training.model_path:
            ctx.console.warn(f"training `{training.name}` has no saved model; left out of McNemar")
            continue
        model = modelfile.load_model(ctx.run_dir / training.model_path)
        out[training.name] = predict_rows(model, images, rows, batch_size)
    return out


# --- 2. comparisons and leakage ----------------------------------------------------------------


def comparison_pairs(trainings: list[TrainingOutcome], final_name: str) -> list[tuple[str, str]]:
    """(model A, model B) pairs to compare: final vs model 3 with augmentation, then each
    architecture with augmentation vs without."""
    by_key = {(t.architecture, t.augmented): t.name for t in trainings if t.model_path}
    pairs = []
    if ("model3", True) in by_key:
        pairs.append((final_name, by_key[("model3", True)]))
    for architecture in sorted({a for a, _ in by_key}):
        if (architecture, True) in by_key and (architecture, False) in by_key:
            pairs.append((by_key[(architecture, True)], by_key[(architecture, False)]))
    return pairs


def paired_tests(labels: np.ndarray, p_final: np.ndarray, others: dict[str, np.ndarray],
                 train: TrainOutcome, final_name: str) -> list[McNemarTest]:
    """McNemar's test of each pair of `comparison_pairs`, decided at threshold 0.5."""
    probabilities = {final_name: p_final, **others}
    return [
        metrics.mcnemar_test(labels, metrics.predict_labels(probabilities[a]),
                             metrics.predict_labels(probabilities[b]), a, b)
        for a, b in comparison_pairs(train.trainings, final_name)
    ]


def leakage_free_mask(split: SplitOutcome, audit: AuditOutcome) -> np.ndarray:
    """True for each test image (split.test order) with no exact or near duplicate in
    train+validation: accuracy on these cannot have been helped by a copy seen in training."""
    seen = set(split.train) | set(split.validation)
    leaky: set[str] = set()
    for group in audit.duplicate_groups:
        if seen.intersection(group.files):
            leaky.update(group.files)
    return np.array([path not in leaky for path in split.test], dtype=bool)


def with_intervals(rows: list[ClassMetrics], intervals: list[Interval]) -> list[ClassMetrics]:
    """Per-class metrics with each class's bootstrap F1 interval attached."""
    return [ClassMetrics(row.label, row.precision, row.recall, row.f1, row.support, f1_interval=interval)
            for row, interval in zip(rows, intervals, strict=True)]


def predictions_table(paths: list[str], labels: np.ndarray, probabilities: np.ndarray,
                      classes: list[str], others: dict[str, np.ndarray]) -> str:
    """CSV: path, true_label, probability (= P(classes[1])), then one probability column per
    compared training, `probability_<name>`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(others)
    writer.writerow(["path", "true_label", "probability", *[f"probability_{n}" for n in names]])
    for i, path in enumerate(paths):
        writer.writerow([path, classes[int(labels[i])], f"{probabilities[i]:.8f}",
                         *[f"{others[n][i]:.8f}" for n in names]])
    return buffer.getvalue()


# --- 3. figures --------------------------------------------------------------------------------


def save_figures(ctx: StageContext, classes: list[str], labels: np.ndarray, probabilities: np.ndarray,
                 at_half: Any, auc: float, threshold: float,
                 reliability: metrics.Calibration) -> list[Figure]:
    from chimuf.ml.plots import save_figure

    drawn = [
        ("confusion_matrix.png", draw_confusion_matrix(np.array(at_half.confusion_matrix), classes,
                                                       at_half.accuracy),
         f"Confusion matrix of the final model on the {len(labels)} test images at threshold 0.5: "
         "rows are the true class, columns the predicted class."),
        ("roc_curve.png", draw_roc(labels, probabilities, auc, threshold, classes),
         f"ROC curve of the final model on the test split, {classes[1]} as the positive class "
         f"(AUC = {auc:.3f}); dots mark thresholds 0.5 and {threshold:.3f} (chosen on validation)."),
        ("reliability.png", draw_reliability(reliability, classes),
         f"Reliability diagram: predicted P({classes[1]}) against the observed share of "
         f"{classes[1]} per bin (ECE = {reliability.expected_calibration_error:.3f})."),
    ]
    figures = []
    for name, figure, caption in drawn:
        path = save_figure(figure, ctx.dir / name)
        figures.append(Figure(ctx.rel(path), caption))
    return figures


def draw_confusion_matrix(cm: np.ndarray, classes: list[str], accuracy: float) -> Any:
    """Counts and row shares; rows = true class, columns = predicted class."""
    from chimuf.ml.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(cm, cmap="Blues")
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # (2, 2), each row sums to 1
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, f"{cm[i, j]}\n{shares[i, j]:.1%}", ha="center", va="center",
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], labels=classes)
    ax.set_yticks([0, 1], labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {accuracy:.3f}")
    return fig


def draw_roc(labels: np.ndarray, probabilities: np.ndarray, auc: float, threshold: float,
             classes: list[str]) -> Any:
    from chimuf.ml.plots import pyplot

    curve = metrics.roc_curve(labels, probabilities)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot(curve.false_positive_rate, curve.true_positive_rate, label=f"final model (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC = 0.5)")
    positive, negative = labels == 1, labels == 0
    for t, marker in ((0.5, "o"), (threshold, "s")):
        predicted = probabilities > t
        tpr = predicted[positive].mean() if positive.any() else float("nan")
        fpr = predicted[negative].mean() if negative.any() else float("nan")
        ax.plot([fpr], [tpr], marker=marker, linestyle="none", label=f"threshold {t:.3f}")
    ax.set_xlabel(f"false positive rate ({classes[0]} called {classes[1]})")
    ax.set_ylabel(f"true positive rate ({classes[1]} found)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right")
    return fig


def draw_reliability(reliability: metrics.Calibration, classes: list[str]) -> Any:
    """Top: mean predicted probability vs observed share per bin; bottom: images per bin."""
    from chimuf.ml.plots import pyplot

    bins = reliability.bins
    centres = np.array([(b.low + b.high) / 2 for b in bins])
    width = bins[0].high - bins[0].low
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 4.8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b.count]
    top.plot([b.mean_probability for b in filled], [b.observed_fraction for b in filled], marker="o",
             label=f"final model (ECE = {reliability.expected_calibration_error:.3f})")
    top.set_ylabel(f"observed share of {classes[1]}")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left")
    bottom.bar(centres, [b.count for b in bins], width=width * 0.9, color="tab:blue")
    bottom.set_xlabel(f"predicted P({classes[1]})")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    return fig


# --- `chimuf evaluate MODEL DIR` -----------------------------------------------------------------


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
    accuracy: float
    accuracy_interval: Interval
    roc_auc: float  # NaN (null in JSON) when the folder holds only one class's images
    roc_auc_interval: Interval
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted, in `classes` order
    per_class: list[ClassMetrics]
    macro_f1: float
    expected_calibration_error: float
    skipped: list[SkippedFile]  # files the audit rejects (and entries not walked), with reasons


def evaluate_folder(model_path: Path, data_dir: Path, audit_cfg: AuditConfig,
                    console: Console) -> FolderEvaluation:
    """Metrics of the model at `model_path` on a labelled folder (one sub-folder per class).

    Files the audit rejects are skipped and listed with their reasons; the rest are evaluated.
    """
    from chimuf.data import audit
    from chimuf.tools.predict import score_files

    model = modelfile.load_model(model_path)
    root = audit.check_data_dir(data_dir)
    listing = audit.list_folder(root)
    classes, source = folder_classes(model_path, root, listing.classes, console)
    files = [root / rel for rel, _ in listing.files]
    scored = score_files(model, files, audit_cfg, console, description="evaluating")

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
                          skipped)


def folder_classes(model_path: Path, root: Path, found: list[str],
                   console: Console) -> tuple[list[str], str]:
    """The model's class names and where they came from; the folder must hold exactly those."""
    saved = modelfile.read_classes(model_path)
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
                   probabilities: np.ndarray, skipped: list[SkippedFile]) -> FolderEvaluation:
    defaults = EvaluateConfig()
    at_half = metrics.metrics_at(labels, probabilities, 0.5, classes, rule="fixed at 0.5")
    intervals = metrics.bootstrap_intervals(labels, probabilities, samples=defaults.bootstrap_samples,
                                            confidence=defaults.confidence, seed=0)
    per_class = with_intervals(at_half.per_class, intervals.f1)
    return FolderEvaluation(
        model=str(model_path),
        data_dir=str(root),
        classes=classes,
        classes_from=source,
        n_images=len(labels),
        threshold=0.5,
        accuracy=at_half.accuracy,
        accuracy_interval=intervals.accuracy,
        roc_auc=metrics.roc_auc(labels, probabilities),
        roc_auc_interval=intervals.roc_auc,
        confusion_matrix=at_half.confusion_matrix,
        per_class=per_class,
        macro_f1=metrics.macro_f1(per_class),
        expected_calibration_error=metrics.calibration(labels, probabilities,
                                                       defaults.calibration_bins).expected_calibration_error,
        skipped=skipped,
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
        f"   ROC AUC {format_number(e.roc_auc)}   macro F1 {e.macro_f1:.3f}   (threshold 0.5)",
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
    return "\n".join(lines)


def format_number(value: float) -> str:
    return "undefined (one class only)" if value != value else f"{value:.3f}"
