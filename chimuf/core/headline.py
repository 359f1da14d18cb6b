"""A run's headline numbers, listed once.

The report's first page, the console's summary, `chimuf compare`, MLflow and the Python API all
show these; each reads them here, so a number added (or renamed) here reaches all five, and none
of them lists them by hand. Plain Python over the typed outcomes: no numpy, no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from chimuf.core.results import EvaluateOutcome, Interval, Results, TrainingOutcome

SD_OVER_FOLDS = "± 1 sd over folds"


@dataclass(frozen=True)
class Number:
    """One headline number of a run."""

    key: str  # machine name: the MLflow metric, the API's column ("test_accuracy", "test_f1.muffin")
    label: str  # words: "test accuracy", "F1 muffin"
    value: float | None  # None: the stage has not run, or the number is undefined (NaN)
    interval: Interval | None = None
    interval_kind: str = ""  # "95% bootstrap", SD_OVER_FOLDS, ...
    sd: float | None = None  # the spread behind an interval of ± 1 sd
    first_page: bool = False  # on the report's first page and in the console's summary


def headline_numbers(r: Results) -> list[Number]:
    """Every headline number of the run, in the report's order; stages not run are left out."""
    numbers: list[Number] = []
    if r.evaluate is not None:
        numbers += test_numbers(r.evaluate)
    if r.kfold is not None:
        k = r.kfold
        numbers.append(Number("kfold_mean_accuracy", "k-fold mean accuracy", value(k.mean_accuracy),
                              spread(k.mean_accuracy, k.std_accuracy), SD_OVER_FOLDS, value(k.std_accuracy),
                              first_page=True))
        numbers.append(Number("kfold_mean_loss", "k-fold mean loss", value(k.mean_loss),
                              spread(k.mean_loss, k.std_loss), SD_OVER_FOLDS, value(k.std_loss)))
        confidence = r.evaluate.confidence if r.evaluate else 0.95
        numbers.append(Number("kfold_oof_accuracy", "k-fold out-of-fold accuracy", value(k.oof_accuracy),
                              k.oof_accuracy_interval, kind_of(k.oof_accuracy_interval, confidence)))
    if r.choose is not None:
        numbers += take_home_numbers(r)
    if r.tune is not None:
        numbers.append(Number("tune_best_score", "tuning best val_accuracy", value(r.tune.best_score)))
    for training in trainings(r):
        numbers.append(Number(f"{training.name}.best_val_accuracy", f"{training.name} best val_accuracy",
                              value(training.best_val_accuracy)))
    return numbers


def take_home_numbers(r: Results) -> list[Number]:
    """The model to take home (chimuf.stages.choose): its test numbers, measured once by the beyond
    stage, with their intervals."""
    c = r.choose
    row = next(row for row in c.candidates if row.name == c.chosen)
    confidence = r.evaluate.confidence if r.evaluate is not None else 0.95
    return [Number("take_home.test_accuracy", "take-home test accuracy", value(row.accuracy),
                   row.accuracy_interval, kind_of(row.accuracy_interval, confidence)),
            Number("take_home.test_roc_auc", "take-home ROC AUC", value(row.roc_auc),
                   row.roc_auc_interval, kind_of(row.roc_auc_interval, confidence))]


def test_numbers(e: EvaluateOutcome) -> list[Number]:
    """The final model on the test split: accuracy and AUC with their intervals, the numbers
    that do not reward guessing the larger class (balanced accuracy, average precision, Brier),
    then the rest."""
    def kind(interval: Interval | None) -> str:
        return kind_of(interval, e.confidence)

    numbers = [
        Number("test_accuracy", "test accuracy", value(e.accuracy), e.accuracy_interval,
               kind(e.accuracy_interval), first_page=True),
        Number("test_roc_auc", "ROC AUC", value(e.roc_auc), e.roc_auc_interval, kind(e.roc_auc_interval),
               first_page=True),
        Number("test_balanced_accuracy", "balanced accuracy", value(e.balanced_accuracy),
               e.balanced_accuracy_interval, kind(e.balanced_accuracy_interval), first_page=True),
        Number("test_average_precision", "average precision", value(e.average_precision),
               e.average_precision_interval, kind(e.average_precision_interval), first_page=True),
        Number("test_brier_score", "Brier score", value(e.brier_score), e.brier_interval,
               kind(e.brier_interval), first_page=True),
        Number("test_macro_f1", "macro F1", value(e.macro_f1)),
    ]
    for m in e.per_class:
        numbers += [Number(f"test_f1.{m.label}", f"F1 {m.label}", value(m.f1), m.f1_interval,
                           kind(m.f1_interval)),
                    Number(f"test_precision.{m.label}", f"precision {m.label}", value(m.precision),
                           m.precision_interval, kind(m.precision_interval)),
                    Number(f"test_recall.{m.label}", f"recall {m.label}", value(m.recall), m.recall_interval,
                           kind(m.recall_interval))]
    numbers += [
        Number("test_expected_calibration_error", "calibration error (ECE)",
               value(e.expected_calibration_error)),
        Number("test_accuracy_at_validation_threshold", "accuracy at the validation threshold",
               value(e.at_validation_threshold.accuracy)),
    ]
    return numbers


def kind_of(interval: Interval | None, confidence: float) -> str:
    """"95% Wilson", "95% BCa bootstrap" (the method the interval records); "95% bootstrap" for
    runs made before intervals recorded their method; "" without an interval."""
    if interval is None:
        return ""
    return f"{round(100 * confidence)}% {interval.method or 'bootstrap'}"


def trainings(r: Results) -> list[TrainingOutcome]:
    """Every training of the run with a best validation accuracy: the six, the final model, and
    the candidates beyond the paper."""
    return [*(r.train.trainings if r.train else []),
            *(t for t in (r.final, r.modern, r.pretrained) if t is not None)]


def number_of(numbers: list[Number], key: str) -> Number | None:
    return next((n for n in numbers if n.key == key), None)


def value(x: float | int | None) -> float | None:
    """A float, or None for a missing or NaN value (results.json writes NaN as null)."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else x


def spread(mean: float, sd: float) -> Interval | None:
    return Interval(mean - sd, mean + sd) if value(mean) is not None and value(sd) is not None else None
