"""Evaluation of the final model on the test split (paper section 7).

The paper reports a confusion matrix, precision / recall / F1 / support per class, accuracy and
the ROC curve with its AUC on the test split. This stage computes the same, plus what a reader
needs to trust them:

    final model ─predict (fixed order)─▶ P(classes[1]) of every validation and test image
        → Predictions (the hand-off to every later analysis) and CSVs for people
        → accuracy, confusion matrix, per-class metrics, ROC AUC at threshold 0.5
          ↳ checked against Keras' own evaluate()
        → imbalance: balanced accuracy, average precision (PR curve), Brier score
        → intervals (chimuf.stats.intervals): Wilson for accuracy, precision and recall; BCa
          bootstrap for F1, AUC, average precision, balanced accuracy and Brier
        → a threshold chosen on the validation split only (`evaluate.threshold_rule`), and the
          test metrics at it
        → calibration (ECE, reliability diagram)
        → McNemar: final vs model 3 with augmentation; each model with vs without augmentation
        → accuracy on the test images that have no exact or near duplicate in train+validation
        → the evidence behind every claim (chimuf.stats.evidence): test accuracy against chance,
          and whether each comparison the report makes is more than noise, every verdict
          decided there at 1 − `evaluate.confidence` (Holm-adjusted within a family)

`chimuf evaluate MODEL DIR` (chimuf.tools.evaluate_folder) runs the same metrics on any folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.config import EvaluateConfig, ModelFilesConfig
from chimuf.core.errors import StageError
from chimuf.core.files import atomic_write_text, csv_text
from chimuf.core.results import (
    DEFAULT_THRESHOLD,
    Comparison,
    EvaluateOutcome,
    Figure,
    McNemarTest,
    Predictions,
    augmentation_pairs,
)
from chimuf.data.cache import load_images
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import predict_rows
from chimuf.ml.plots.common import save_figure
from chimuf.ml.plots.evaluation_plots import (
    draw_confusion_matrix,
    draw_precision_recall,
    draw_reliability,
    draw_roc,
)
from chimuf.ml.training.pipeline import make_dataset
from chimuf.stats import evidence, intervals, metrics

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import TrainConfig
    from chimuf.core.engine import StageContext
    from chimuf.core.results import (
        AuditOutcome,
        CacheOutcome,
        SplitOutcome,
        TrainingOutcome,
        TrainOutcome,
    )
    from chimuf.data.cache import ImageSet


def evaluate_final(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, audit: AuditOutcome,
                   final: TrainingOutcome, train: TrainOutcome, cfg: EvaluateConfig,
                   train_cfg: TrainConfig, seed: int,
                   limits: ModelFilesConfig | None = None) -> EvaluateOutcome:
    """Every test-split metric of the final model, its predictions and figures; the saved models
    are opened within `limits` (chimuf.ml.modelfiles.modelfile)."""
    classes = list(split.classes)
    images = load_images(cache)
    val_rows, test_rows = images.rows(split.validation), images.rows(split.test)
    y_val = np.asarray(images.labels)[val_rows]
    y_test = np.asarray(images.labels)[test_rows]
    batch = train_cfg.batch_size

    # 1. The final model's P(classes[1]) for every validation and test image, in split order.
    model = modelfile.load_model(ctx.run_dir / final.model_path, limits, ctx.console)
    p_val = predict_rows(model, images, val_rows, batch)
    p_test = predict_rows(model, images, test_rows, batch)
    keras_acc = keras_accuracy(model, images, test_rows, batch)

    # 2. The paper's metrics at threshold 0.5, and the check against Keras.
    at_half = metrics.metrics_at(y_test, p_test, DEFAULT_THRESHOLD, classes,
                                 rule=f"fixed at {DEFAULT_THRESHOLD:g}")
    check_agreement(at_half.accuracy, keras_acc, len(test_rows))
    auc = metrics.roc_auc(y_test, p_test)
    imbalance = imbalance_metrics(y_test, p_test)

    # 3. How far those numbers could move with another test sample of the same size.
    spread = intervals.metric_intervals(y_test, p_test, threshold=DEFAULT_THRESHOLD,
                                        samples=cfg.bootstrap_samples, confidence=cfg.confidence,
                                        seed=seed)
    per_class = metrics.with_intervals(at_half.per_class, spread.f1, spread.precision, spread.recall)

    # 4. A threshold chosen on validation predictions only; the test metrics at it.
    threshold = metrics.choose_threshold(y_val, p_val, cfg.threshold_rule)
    at_validation = metrics.metrics_at(y_test, p_test, threshold, classes,
                                       rule=metrics.describe_rule(cfg.threshold_rule))

    # 5. Calibration of P(classes[1]).
    reliability = metrics.calibration(y_test, p_test, cfg.calibration_bins)

    # 6. Paired comparisons with the trainings, on the same test images.
    others = predict_trainings(ctx, train, images, test_rows, batch, limits)
    mcnemar = paired_tests(y_test, p_test, others, train, final.name)

    # 7. Test images with no exact or near copy in train+validation.
    clean = leakage_free_mask(split, audit)  # (n_test,) bool, in split.test order
    clean_accuracy = (metrics.accuracy(y_test[clean], metrics.predict_labels(p_test[clean]))
                      if clean.any() else None)

    # 8. What the data can tell apart: chance, and every comparison the report makes.
    chance = evidence.chance_test(y_test, metrics.predict_labels(p_test), classes, 1 - cfg.confidence)
    comparisons = weigh_comparisons(y_test, p_test, others, mcnemar, train, final, split, classes,
                                    cfg.confidence)

    # 9. Files: predictions, then figures.
    predictions_csv = ctx.dir / "predictions.csv"
    atomic_write_text(predictions_csv, predictions_table(split.test, y_test, p_test, classes, others))
    validation_csv = ctx.dir / "validation_predictions.csv"
    atomic_write_text(validation_csv, predictions_table(split.validation, y_val, p_val, classes, {}))
    confusion, roc, pr, calibration = save_figures(ctx, classes, y_test, p_test, at_half, auc, threshold,
                                                   reliability, imbalance["average_precision"])
    ctx.console.info(f"  {final.name}: test accuracy {at_half.accuracy:.3f} [{spread.accuracy.low:.3f}, "
                     f"{spread.accuracy.high:.3f}], ROC AUC {auc:.3f} on {len(test_rows)} images; "
                     f"{at_validation.accuracy:.3f} at the validation threshold {threshold:.3f}")
    ctx.console.info(f"  {chance.verdict}: always answering {chance.majority_label} scores "
                     f"{chance.majority_rate:.3f} on these images (exact binomial p = {chance.p_value:.3g}, "
                     f"decided at {chance.alpha:g})")

    outcome = EvaluateOutcome(
        model=final.name,
        classes=classes,
        n_images=len(test_rows),
        accuracy=at_half.accuracy,
        accuracy_interval=spread.accuracy,
        roc_auc=auc,
        roc_auc_interval=spread.roc_auc,
        confusion_matrix=at_half.confusion_matrix,
        per_class=per_class,
        macro_f1=metrics.macro_f1(per_class),
        at_validation_threshold=at_validation,
        expected_calibration_error=reliability.expected_calibration_error,
        mcnemar=mcnemar,
        leakage_free_accuracy=clean_accuracy,
        leakage_free_n=int(clean.sum()),
        keras_accuracy=keras_acc,
        predictions=Predictions(classes, DEFAULT_THRESHOLD, list(split.test), y_test.tolist(),
                                p_test.tolist()),
        predictions_csv=ctx.rel(predictions_csv),
        confusion_figure=confusion,
        roc_figure=roc,
        reliability_figure=calibration,
        confidence=cfg.confidence,
        bootstrap_samples=cfg.bootstrap_samples,
        validation_predictions_csv=ctx.rel(validation_csv),
        chance=chance,
        comparisons=comparisons,
        balanced_accuracy=imbalance["balanced_accuracy"],
        balanced_accuracy_interval=spread.balanced_accuracy,
        average_precision=imbalance["average_precision"],
        average_precision_interval=spread.average_precision,
        brier_score=imbalance["brier_score"],
        brier_interval=spread.brier,
        pr_figure=pr,
    )
    ctx.console.info("  " + outcome.imbalance_summary())
    return outcome


def imbalance_metrics(labels: np.ndarray, probabilities: np.ndarray,
                      threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The numbers that do not reward always answering the larger class."""
    return {"balanced_accuracy": metrics.balanced_accuracy(labels, metrics.predict_labels(probabilities,
                                                                                          threshold)),
            "average_precision": metrics.average_precision(labels, probabilities),
            "brier_score": metrics.brier_score(labels, probabilities)}


# --- 1. predicting -----------------------------------------------------------------------------


def keras_accuracy(model: keras.Model, images: ImageSet, rows: np.ndarray, batch_size: int) -> float:
    """Accuracy as Keras' own `evaluate()` computes it: an independent check of ours."""
    import keras

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


def predict_trainings(ctx: StageContext, train: TrainOutcome, images: ImageSet, rows: np.ndarray,
                      batch_size: int, limits: ModelFilesConfig | None = None) -> dict[str, np.ndarray]:
    """P(classes[1]) of each training's saved model on `rows`, by training name."""
    out = {}
    for training in train.trainings:
        if not training.model_path:
            ctx.console.warn(f"training `{training.name}` has no saved model; left out of McNemar")
            continue
        model = modelfile.load_model(ctx.run_dir / training.model_path, limits, ctx.console)
        out[training.name] = predict_rows(model, images, rows, batch_size)
    return out


# --- 2. comparisons and leakage ----------------------------------------------------------------


def comparison_pairs(trainings: list[TrainingOutcome], final_name: str) -> list[tuple[str, str]]:
    """(model A, model B) pairs to compare: final vs model 3 with augmentation, then each
    architecture with augmentation vs without."""
    saved = [t for t in trainings if t.model_path]
    model3_aug = next((t.name for t in saved if (t.architecture, t.augmented) == ("model3", True)), None)
    pairs = [(final_name, model3_aug)] if model3_aug else []
    return pairs + [(augmented.name, plain.name) for _, plain, augmented in augmentation_pairs(saved)]


def paired_tests(labels: np.ndarray, p_final: np.ndarray, others: dict[str, np.ndarray],
                 train: TrainOutcome, final_name: str) -> list[McNemarTest]:
    """McNemar's test of each pair of `comparison_pairs`, decided at threshold 0.5."""
    probabilities = {final_name: p_final, **others}
    return [
        metrics.mcnemar_test(labels, metrics.predict_labels(probabilities[a]),
                             metrics.predict_labels(probabilities[b]), a, b)
        for a, b in comparison_pairs(train.trainings, final_name)
    ]


def weigh_comparisons(labels: np.ndarray, p_final: np.ndarray, others: dict[str, np.ndarray],
                      mcnemar: list[McNemarTest], train: TrainOutcome, final: TrainingOutcome,
                      split: SplitOutcome, classes: list[str], confidence: float) -> list[Comparison]:
    """Every comparison of the report, each with its evidence: on validation (the six trainings,
    the final model), on the test split (McNemar), and against the paper."""
    accuracies = {name: metrics.accuracy(labels, metrics.predict_labels(p))
                  for name, p in {final.name: p_final, **others}.items()}
    return evidence.every_comparison(train.trainings, train.best(), final, len(split.validation),
                                     mcnemar, accuracies, len(labels), classes, confidence)


def leakage_free_mask(split: SplitOutcome, audit: AuditOutcome) -> np.ndarray:
    """True for each test image (split.test order) with no exact or near duplicate in
    train+validation: accuracy on these cannot have been helped by a copy seen in training."""
    seen = set(split.train) | set(split.validation)
    leaky: set[str] = set()
    for group in audit.duplicate_groups:
        if seen.intersection(group.files):
            leaky.update(group.files)
    return np.array([path not in leaky for path in split.test], dtype=bool)


def predictions_table(paths: list[str], labels: np.ndarray, probabilities: np.ndarray,
                      classes: list[str], others: dict[str, np.ndarray]) -> str:
    """CSV: path, true_label, probability (= P(classes[1])), then one probability column per
    compared training, `probability_<name>`."""
    names = list(others)
    header = ["path", "true_label", "probability", *[f"probability_{n}" for n in names]]
    rows = ([path, classes[int(labels[i])], f"{probabilities[i]:.8f}",
             *[f"{others[n][i]:.8f}" for n in names]] for i, path in enumerate(paths))
    return csv_text(header, rows)


# --- 3. figures --------------------------------------------------------------------------------


def save_figures(ctx: StageContext, classes: list[str], labels: np.ndarray, probabilities: np.ndarray,
                 at_half: Any, auc: float, threshold: float, reliability: metrics.Calibration,
                 average_precision: float) -> tuple[Figure, Figure, Figure, Figure]:
    """The confusion matrix, the ROC curve, the precision-recall curve and the reliability
    diagram, in that order."""
    drawn = [
        ("confusion_matrix.png", draw_confusion_matrix(np.array(at_half.confusion_matrix), classes,
                                                       at_half.accuracy),
         f"Confusion matrix of the final model on the {len(labels)} test images at threshold "
         f"{DEFAULT_THRESHOLD:g}: "
         "rows are the true class, columns the predicted class."),
        ("roc_curve.png", draw_roc(labels, probabilities, auc, threshold, classes),
         f"ROC curve of the final model on the test split, {classes[1]} as the positive class "
         f"(AUC = {auc:.3f}); dots mark thresholds {DEFAULT_THRESHOLD:g} and {threshold:.3f} (chosen on "
         "validation)."),
        ("precision_recall.png", draw_precision_recall(labels, probabilities, average_precision,
                                                        threshold, classes),
         f"Precision-recall curve of the final model on the test split, {classes[1]} as the positive "
         f"class (average precision = {average_precision:.3f}; a classifier that guesses scores "
         f"{float(np.mean(labels)):.3f}, the share of {classes[1]}); dots mark thresholds "
         f"{DEFAULT_THRESHOLD:g} and {threshold:.3f}."),
        ("reliability.png", draw_reliability(reliability, classes),
         f"Reliability diagram: predicted P({classes[1]}) against the observed share of "
         f"{classes[1]} per bin (ECE = {reliability.expected_calibration_error:.3f})."),
    ]
    confusion, roc, pr, calibration = (Figure(ctx.rel(save_figure(figure, ctx.dir / name)), caption)
                                       for name, figure, caption in drawn)
    return confusion, roc, pr, calibration
