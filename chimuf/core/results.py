"""What each stage hands on: plain dataclasses, saved as JSON, read by later stages and the report.

This module is the contract between the stages and the report. It imports nothing heavy, so the
report can read a run without TensorFlow. Paths inside outcomes are relative to the run folder
(figures, models, CSVs) or to the data folder (image files), so a run folder can be moved.

`results.json` in the run folder gathers every finished stage's outcome under `Results`; its
layout is documented in docs/results.md and versioned by SCHEMA_VERSION.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from chimuf.core.errors import ReportError
from chimuf.core.hyperparameters import Hyperparameters

SCHEMA_VERSION = 2  # 2: typed predictions, named evaluation figures, hyperparameter objects

# An image is predicted as classes[1] when its probability is greater than the threshold (Keras'
# binary accuracy rule). The paper's metrics use this one; a threshold chosen on validation data
# travels with the model (see chimuf.ml.modelfiles.predictor).
DEFAULT_THRESHOLD = 0.5


def predicted_id(probability: float, threshold: float = DEFAULT_THRESHOLD) -> int:
    """0 or 1: the class an image gets, p > threshold meaning classes[1]."""
    return int(probability > threshold)


@dataclass
class Figure:
    path: str  # relative to the run folder
    caption: str


# --- audit -------------------------------------------------------------------------------------


@dataclass
class FileRecord:
    path: str  # relative to the data folder, POSIX separators
    label: str  # class = sub-folder name
    verdict: str  # "usable" | "converted" | "rejected"
    reason: str  # why converted or rejected; "" when usable as is
    size_bytes: int
    sha256: str = ""
    format: str = ""  # Pillow format: JPEG, PNG, ...
    mode: str = ""  # Pillow mode before conversion: RGB, L, P, RGBA, CMYK, I;16, ...
    width: int = 0
    height: int = 0
    phash: str = ""  # 64-bit perceptual hash as 16 hex digits; "" when rejected
    split: str = ""  # the split the user fixed (given folder, CSV column): train|validation|test; "" free
    group: str = ""  # the labels CSV's group: kept inside one split; "" none


@dataclass
class DuplicateGroup:
    kind: str  # "exact" (same SHA-256) | "near" (perceptual hashes within the threshold)
    files: list[str]  # relative paths, sorted
    labels: list[str]  # class of each file, same order
    cross_class: bool  # the group spans classes: possible label noise


@dataclass
class ClassCount:
    label: str
    usable: int  # usable as is + usable after conversion
    converted: int
    rejected: int


@dataclass
class AuditOutcome:
    data_dir: str  # absolute path as audited
    # sorted class names, data.positive last when set; index = label id (sigmoid output = P(classes[1]))
    classes: list[str]
    files: list[FileRecord]
    counts: list[ClassCount]
    duplicate_groups: list[DuplicateGroup]
    skipped: list[str]  # nested folders and other entries not walked, with reasons
    digest: str  # SHA-256 over the usable files' (path, label, sha256): the data's identity
    wall_s: float = 0.0
    near_duplicate_distance: int = 0  # the threshold (bits) the near groups were found with
    max_per_class: int = 0  # > 0: a seeded sample of this many files per class was audited
    labels_csv: str = ""  # absolute path of the labels CSV the files came from; "" = the class folders
    test_dir: str = ""  # absolute path of the given test folder (its files' paths begin "test:")
    val_dir: str = ""  # absolute path of the given validation folder (paths begin "val:")
    positive: str = ""  # data.positive as set ("" = classes[1] by name order); classes[1] is positive
    test_duplicates: list[DuplicateGroup] = field(default_factory=list)  # groups linking the test set
    # (given or fixed by the CSV) with images outside it: possible leakage into training


# --- split and cache ---------------------------------------------------------------------------


@dataclass
class SplitCount:
    label: str
    train: int
    validation: int
    test: int


@dataclass
class SplitPrecision:
    """How finely a split of n images can measure an accuracy, known as soon as it is made."""

    split: str  # "validation" | "test"
    n: int  # images in the split
    half_width: float  # ± of the Wilson interval of an accuracy on n images, at its widest (0.5)
    confidence: float  # level of that interval (0.95)
    limit: float  # a half-width above this flags the split as small (0.05: ±5 points)
    needed: int  # images the split would need for its half-width to be at most `limit`
    small: bool  # half_width > limit: differences smaller than ±half_width are noise here


@dataclass
class SplitOutcome:
    classes: list[str]
    train: list[str]  # relative paths, in content order (SHA-256, then path)
    validation: list[str]
    test: list[str]
    counts: list[SplitCount]
    groups: list[list[str]]  # near-duplicate groups (paths) kept inside one split
    digest: str
    precision: list[SplitPrecision] = field(default_factory=list)  # validation, then test
    given: list[str] = field(default_factory=list)  # splits the user fixed (given folder, CSV column)
    dropped: list[str] = field(default_factory=list)  # left out of training and validation: near
    # duplicates of a given test image (data.drop_test_duplicates)

    def split_names(self) -> dict[str, str]:
        """Path → "train", "validation" or "test"."""
        return {path: name for name in ("train", "validation", "test") for path in getattr(self, name)}


@dataclass
class CacheOutcome:
    # ABSOLUTE path of the .npy file, uint8 (N, size, size, 3), memory-mapped by later stages. The
    # cache is shared by every run on the same data and size, so it lives outside the run folder.
    images_path: str
    paths: list[str]  # row i of the array is this file (relative to the data folder)
    labels: list[int]  # label id of row i
    image_size: int
    digest: str


# --- training ----------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    auc: float = float("nan")
    val_auc: float = float("nan")
    wall_s: float = 0.0
    learning_rate: float = float("nan")  # the optimizer's rate at the end of the epoch
    images_per_s: float = 0.0  # training images per second of the epoch's training pass


@dataclass
class LayerRow:
    name: str
    kind: str  # Conv2D, MaxPooling2D, Dropout, ...
    output_shape: str  # e.g. "(None, 64, 64, 32)"
    params: int


@dataclass
class TrainingOutcome:
    name: str  # "model1", "model1_aug", ..., "final", "fold3"
    architecture: str  # "model1" | "model2" | "model3" | "tuned"
    augmented: bool
    params: int
    layers: list[LayerRow]
    epochs_run: int
    best_epoch: int  # 1-based epoch whose weights were kept
    stopped_early: bool
    best_val_loss: float
    best_val_accuracy: float
    history: list[EpochRecord]
    history_csv: str
    model_path: str  # .keras file, relative to the run folder
    figure: Figure | None
    wall_s: float
    images_per_s: float
    precision: str  # "float32" | "mixed_bfloat16"
    hyperparameters: Hyperparameters | None = None  # the tuned family's values; None for models 1-3
    model_sha256: str = ""  # of model_path as saved: later stages trust the study's own file by it
    trained_side: int = 0  # the side it trained at where the saved model takes a larger one; 0: the same


@dataclass
class TrainOutcome:
    trainings: list[TrainingOutcome]
    comparison_figures: list[Figure]  # per model: with vs without augmentation

    def augmentation_pairs(self) -> list[Pair]:
        """(architecture, without, with) for every architecture trained both ways (paper 5.4)."""
        return augmentation_pairs(self.trainings)

    def best(self) -> TrainingOutcome | None:
        """The training with the highest best validation accuracy (the paper's 5.5); the first of
        equals. None when no training has a validation accuracy."""
        scored = [t for t in self.trainings if t.best_val_accuracy == t.best_val_accuracy]  # not NaN
        return max(scored, key=lambda t: t.best_val_accuracy, default=None)


Pair = tuple[str, "TrainingOutcome", "TrainingOutcome"]  # (architecture, without, with augmentation)


def augmentation_pairs(trainings: list[TrainingOutcome]) -> list[Pair]:
    """(architecture, without, with) for every architecture among `trainings` trained both ways, in
    architecture order: the one pairing the report, the evidence and the McNemar tests share."""
    by_key = {(t.architecture, t.augmented): t for t in trainings}
    return [(architecture, by_key[(architecture, False)], by_key[(architecture, True)])
            for architecture in sorted({a for a, _ in by_key})
            if (architecture, False) in by_key and (architecture, True) in by_key]


# --- tuning ------------------------------------------------------------------------------------


@dataclass
class SearchDimension:
    name: str
    values: list[float]  # every value the search may pick


@dataclass
class Trial:
    trial_id: str
    status: str  # "COMPLETED" | "FAILED" | ...
    hyperparameters: Hyperparameters
    score: float | None  # best val_accuracy of the trial
    epochs: int
    wall_s: float
    history: list[EpochRecord]
    error: str = ""
    worker: str = ""  # distributed search: the id of the worker that ran it; "" when run locally
    pruned: bool = False  # the median stopping rule ended it before early stopping would have


@dataclass
class TuneOutcome:
    objective: str
    max_trials: int
    search_space: list[SearchDimension]
    trials: list[Trial]
    best_hyperparameters: Hyperparameters
    best_score: float
    wall_s: float
    pruning: str = "off"  # how trials were pruned: "off" or the rule, in words
    epochs_saved: list[int] = field(default_factory=list)  # [fewest, most] epochs pruning saved
    progress_figure: Figure | None = None  # each trial's objective in trial order, best so far
    hyperparameter_figure: Figure | None = None  # the objective against each hyperparameter


# --- predictions: computed once by the evaluate stage, read by every later analysis -------------


@dataclass(frozen=True)
class Prediction:
    """One image as a model scored it."""

    path: str  # relative to the data folder
    true_id: int  # index into the classes
    probability: float  # P(classes[1]) given by the model
    threshold: float = DEFAULT_THRESHOLD

    @property
    def predicted_id(self) -> int:
        return predicted_id(self.probability, self.threshold)

    @property
    def right(self) -> bool:
        return self.predicted_id == self.true_id

    def probability_of(self, class_id: int) -> float:
        return self.probability if class_id == 1 else 1.0 - self.probability

    @property
    def probability_true(self) -> float:
        """The probability the model gave the image's true class."""
        return self.probability_of(self.true_id)


def sorted_mistakes(predictions: list[Prediction]) -> list[Prediction]:
    """The misclassified ones, most confident first: lowest probability of the true class."""
    wrong = [p for p in predictions if not p.right]
    return sorted(wrong, key=lambda p: (p.probability_true, p.path))


@dataclass
class Predictions:
    """P(classes[1]) of every image of one split, in split order, decided at `threshold`.

    Made once (fastai's Interpretation is the model): every analysis of the mistakes asks this
    object rather than recomputing or re-reading predictions. The CSV files beside it are for
    people.
    """

    classes: list[str]
    threshold: float
    paths: list[str]  # relative to the data folder
    labels: list[int]  # true class ids
    probabilities: list[float]  # P(classes[1])

    def __len__(self) -> int:
        return len(self.paths)

    def items(self) -> list[Prediction]:
        return [Prediction(path, label, probability, self.threshold) for path, label, probability
                in zip(self.paths, self.labels, self.probabilities, strict=True)]

    def mistakes(self) -> list[Prediction]:
        """Every misclassified image, most confident mistake first."""
        return sorted_mistakes(self.items())


# --- evidence: what the data can and cannot tell apart ------------------------------------------


@dataclass
class ChanceTest:
    """Accuracy against guessing: always answering the majority class of the same images."""

    n: int  # images
    correct: int  # classified right
    accuracy: float  # correct / n
    majority_label: str  # the most frequent class among the n images
    majority_rate: float  # its share: the accuracy of always answering it
    p_value: float  # exact one-sided binomial test of correct ~ Bin(n, majority_rate), "greater"
    alpha: float  # significance level (1 − the intervals' confidence)
    better_than_chance: bool  # p_value < alpha
    method: str = "exact binomial, one-sided"

    @property
    def verdict(self) -> str:
        """The words every reader of this test prints (console, report, beyond table, compare)."""
        return CHANCE_VERDICTS[self.better_than_chance]


CHANCE_VERDICTS = {True: "better than chance", False: "not distinguishable from chance"}
COMPARISON_VERDICTS = {True: "distinguishable", False: "not distinguishable"}


@dataclass
class Comparison:
    """Two accuracies set side by side, and whether the images they were measured on tell them
    apart. On the test split by McNemar's test (paired); on validation, and against the paper, by
    Newcombe's interval of the difference of two proportions."""

    topic: str  # "best_training" | "augmentation" | "final_vs_model3_aug" | "paper"
    split: str  # "validation" | "test"
    model_a: str
    model_b: str  # "paper" for the paper's own result
    accuracy_a: float
    accuracy_b: float
    n_a: int  # images behind accuracy_a
    n_b: int
    difference: float  # accuracy_a − accuracy_b
    interval: Interval | None  # of the difference (Newcombe); None for McNemar's test
    p_value: float | None  # McNemar's; None when judged by the interval
    method: str  # "McNemar, exact binomial" | "Newcombe hybrid score interval" | ...
    distinguishable: bool  # p_adjusted < alpha (alpha = 1 − confidence)
    confidence: float = 0.95
    # Holm's adjustment over the comparisons of one family (same topic and split): p_value
    # multiplied step-down; None in runs made before it (their verdict is the unadjusted one)
    p_adjusted: float | None = None
    family_size: int = 1  # comparisons in the family

    @property
    def verdict(self) -> str:
        return COMPARISON_VERDICTS[self.distinguishable]


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class Interval:
    low: float
    high: float
    method: str = ""  # "Wilson" | "BCa bootstrap" | "percentile bootstrap" | ...; "" = not recorded


@dataclass
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    f1_interval: Interval | None = None
    precision_interval: Interval | None = None  # Wilson, of TP out of everything predicted as the class
    recall_interval: Interval | None = None  # Wilson, of TP out of everything that is the class


@dataclass
class ThresholdMetrics:
    threshold: float
    accuracy: float
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted, in `classes` order
    per_class: list[ClassMetrics]
    rule: str = ""  # how the threshold was chosen, e.g. "maximum accuracy on the validation split"


@dataclass
class McNemarTest:
    model_a: str
    model_b: str
    only_a_right: int
    only_b_right: int
    statistic: float
    p_value: float
    method: str = ""  # "exact binomial" (few discordant pairs) | "chi-square, continuity-corrected"


@dataclass
class EvaluateOutcome:
    model: str  # which training was evaluated ("final")
    classes: list[str]
    n_images: int
    accuracy: float
    accuracy_interval: Interval
    roc_auc: float
    roc_auc_interval: Interval
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted, threshold 0.5
    per_class: list[ClassMetrics]
    macro_f1: float
    at_validation_threshold: ThresholdMetrics  # threshold chosen on the validation split only
    expected_calibration_error: float
    mcnemar: list[McNemarTest]
    leakage_free_accuracy: float | None  # on test images with no near duplicate in train+val
    leakage_free_n: int
    keras_accuracy: float  # Keras' own evaluate(), must agree with `accuracy`
    predictions: Predictions  # the test split, at `threshold`
    predictions_csv: str  # the same for people: path, true label, probability of classes[1]
    confusion_figure: Figure
    roc_figure: Figure
    reliability_figure: Figure
    confidence: float = 0.95
    bootstrap_samples: int = 0
    validation_predictions_csv: str = ""  # the same for the validation split (threshold choice)
    threshold: float = DEFAULT_THRESHOLD  # the paper's metrics above are decided at this threshold
    chance: ChanceTest | None = None  # test accuracy against always answering the majority class
    # every comparison the report and the console make, with its evidence (chimuf.stats.evidence)
    comparisons: list[Comparison] = field(default_factory=list)
    # imbalance: numbers that do not reward always answering the larger class (NaN in older runs)
    balanced_accuracy: float = float("nan")  # mean of the two recalls, at `threshold`
    balanced_accuracy_interval: Interval | None = None
    average_precision: float = float("nan")  # area under the precision-recall curve of classes[1]
    average_precision_interval: Interval | None = None
    brier_score: float = float("nan")  # mean (P(classes[1]) − label)², 0 is perfect
    brier_interval: Interval | None = None
    pr_figure: Figure | None = None  # precision-recall curve

    def compared(self, topic: str, split: str = "") -> list[Comparison]:
        """The comparisons of one topic ("augmentation", ...), of one split when given."""
        return [c for c in self.comparisons if c.topic == topic and (not split or c.split == split)]

    def imbalance_summary(self) -> str:
        """"balanced accuracy 0.912 [0.890, 0.931], average precision …, Brier score …": the
        evaluate stage's console line (the study's summary reads chimuf.core.headline)."""
        named = (("balanced accuracy", self.balanced_accuracy, self.balanced_accuracy_interval),
                 ("average precision", self.average_precision, self.average_precision_interval),
                 ("Brier score", self.brier_score, self.brier_interval))
        return ", ".join(f"{name} {value:.3f}" + (f" [{i.low:.3f}, {i.high:.3f}]" if i else "")
                         for name, value, i in named)

    @property
    def figures(self) -> list[Figure]:
        """The evaluation's figures in the report's order."""
        return [self.confusion_figure, self.roc_figure,
                *([self.pr_figure] if self.pr_figure else []), self.reliability_figure]


@dataclass
class FoldOutcome:
    fold: int  # 1-based
    status: str  # "COMPLETED" | "FAILED"
    n_train: int
    n_validation: int
    accuracy: float
    loss: float
    epochs_run: int
    wall_s: float
    error: str = ""
    history: list[EpochRecord] = field(default_factory=list)  # per epoch, on this fold's held-out part
    model_path: str = ""  # the fold's kept model (.keras, relative to the run folder): an ensemble member


@dataclass
class KFoldOutcome:
    folds: list[FoldOutcome]
    mean_accuracy: float
    std_accuracy: float
    mean_loss: float
    std_loss: float
    figure: Figure | None
    early_stopping: bool = True  # each fold stopped on its own held-out fold (the paper's way)
    epochs: int = 0  # fixed epochs of every fold (without early stopping), or the maximum
    # every train+validation image of a completed fold, scored by the model that did not see it
    predictions: Predictions | None = None
    predictions_csv: str = ""  # the same for people, with each image's fold
    fold_of: list[int] = field(default_factory=list)  # 1-based fold of predictions.paths[i]
    # every held-out image's prediction at DEFAULT_THRESHOLD, pooled: right / images (NaN in older runs)
    oof_accuracy: float = float("nan")
    oof_accuracy_interval: Interval | None = None  # Wilson, at evaluate.confidence


# --- suspect labels ----------------------------------------------------------------------------


@dataclass
class SuspectLabel:
    """An image whose given label its out-of-fold prediction contradicts (confident learning)."""

    path: str  # relative to the data folder
    given_label: str  # the class folder it sits in
    suggested_label: str  # the class the out-of-fold model gives it
    probability_given: float  # out-of-fold probability of the given label
    fold: int  # the fold whose model scored it
    split: str  # "train" | "validation"
    # exact or near duplicates of it (audit) filed under the suggested class: they agree that
    # the given label is wrong
    agreeing_duplicates: list[str] = field(default_factory=list)


@dataclass
class LabelsOutcome:
    """Suspect labels from the k-fold's out-of-fold predictions, and the duplicates as pictures."""

    method: str  # how the suspects were found
    n_checked: int  # images with an out-of-fold prediction
    suspects: list[SuspectLabel]  # most suspicious first (lowest probability of the given label)
    suspects_csv: str  # every suspect, for people (run-relative)
    suspects_figure: Figure | None  # thumbnails of the first suspects
    n_shown: int  # suspects in suspects_figure
    duplicate_figures: list[Figure]  # thumbnail strips of the first duplicate groups
    n_groups_shown: int  # groups in duplicate_figures
    duplicates_csv: str  # every duplicate group, one row per file, with its class and split
    # the out-of-fold accuracy against the majority class: suspects of models that do no better
    # than guessing say little
    oof_chance: ChanceTest | None = None


# --- explanation -------------------------------------------------------------------------------


@dataclass
class ExplainedImage:
    path: str  # relative to the data folder
    true_label: str
    predicted_label: str
    probability_true: float  # the probability the model gave the true class
    figure: Figure | None = None  # Grad-CAM per conv layer for this image


@dataclass
class ExplainOutcome:
    conv_layers: list[str]
    kernel_figures: list[Figure]
    activation_figures: list[Figure]
    gradcam_figures: list[Figure]
    method_figures: list[Figure]  # Grad-CAM, Grad-CAM++, Score-CAM, SmoothGrad side by side
    gallery_figure: Figure | None  # thumbnails of the most confident mistakes, P(true) under each
    misclassified: list[ExplainedImage]  # most confident mistakes first
    n_misclassified: int
    # the test images of activation_figures, in the same order (figure = its activation figure)
    activation_images: list[ExplainedImage] = field(default_factory=list)
    n_test: int = 0  # test images in the evaluate stage's predictions
    threshold: float = DEFAULT_THRESHOLD  # p > threshold predicts classes[1], as the evaluate stage counts
    n_gallery: int = 0  # mistakes in gallery_figure
    misclassified_csv: str = ""  # every mistake, for people (run-relative)


# --- beyond the paper ---------------------------------------------------------------------------


@dataclass
class OwnOutcome:
    """The user's own architectures (ml.architectures.builders), each trained by the fit loop; [] = none."""

    trainings: list[TrainingOutcome] = field(default_factory=list)


@dataclass
class BeyondRow:
    """One classifier beyond the paper's protocol, on the same test split as the final model."""

    name: str  # "final + flips", "modern", "fold ensemble", ...
    description: str
    models: int  # models averaged
    flips: bool  # test-time augmentation: each image averaged with its mirror
    accuracy: float  # at threshold 0.5
    accuracy_interval: Interval
    roc_auc: float
    roc_auc_interval: Interval
    chance_p_value: float  # exact binomial test: accuracy above the majority-class rate?
    vs_final: McNemarTest | None  # against the paper-protocol final model (None for that model)
    chance: ChanceTest | None = None  # the same test with its verdict (None in older runs)
    # vs_final with its verdict, Holm-adjusted over the rows (None for the reference, older runs)
    versus_final: Comparison | None = None
    # what the take-home choice reads (chimuf.stages.choose), never a test number: accuracy at 0.5 on
    # the validation split, or out-of-fold on train+validation for the fold ensembles (whose models
    # were trained on the validation images); NaN: no honest score (the candidate is not eligible)
    validation_accuracy: float = float("nan")
    validation_n: int = 0  # images behind validation_accuracy
    validation_source: str = ""  # "validation" | "out-of-fold" | why there is no score
    cost: int = 0  # parameters × forward passes per image (models × 2 with flips): the tie-break
    model_paths: list[str] = field(default_factory=list)  # the members' .keras files (run-relative)


@dataclass
class BeyondOutcome:
    n_images: int  # test images
    majority_rate: float  # accuracy of always answering the larger class of the test split
    rows: list[BeyondRow]  # the final model first, as the reference
    confidence: float = 0.95  # every verdict of the rows is decided at 1 − this


# --- the model to take home --------------------------------------------------------------------


@dataclass
class ChooseOutcome:
    """The model to take home, chosen among the beyond stage's candidates by a rule that reads
    validation (or out-of-fold) scores only; its test numbers are the ones measured once there."""

    rule: str  # the rule, in words, as fixed before any test number is read
    candidates: list[BeyondRow]  # every candidate, in the beyond stage's order, with its scores
    chosen: str  # the chosen candidate's name
    model_path: str  # the chosen classifier as one .keras file (members and flips inside), run-relative
    threshold: float  # decision threshold chosen on the chosen candidate's validation predictions
    threshold_rule: str
    model_sha256: str = ""  # of model_path as saved (the export stage copies it byte for byte)
    gradcam_figure: Figure | None = None  # its most confident test mistakes, after the choice


def recorded_model_digests(value: Any) -> set[str]:
    """Every `model_sha256` recorded anywhere in `value` (Results, an outcome): the model files the
    study saved itself (chimuf.ml.modelfiles.modelfile.vouch)."""
    found: set[str] = set()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "model_sha256" and isinstance(item, str) and item:
                found.add(item)
            else:
                found |= recorded_model_digests(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= recorded_model_digests(item)
    return found


@dataclass
class ExportedModel:
    format: str  # "savedmodel" | "tflite" | "onnx" | "openvino"
    path: str  # relative to the run folder (a folder for a SavedModel)
    size_bytes: int
    images_checked: int  # test images the export was run on beside the Keras model
    max_abs_difference: float  # largest |P(export) - P(Keras float32 model)| over those images
    max_abs_difference_saved: float  # the same against the saved model itself (bf16 if trained so)
    quantization: str = ""  # "" (float32), "float16", "dynamic" or "int8" (TFLite)
    test_accuracy: float | None = None  # on the whole test split, at the model's chosen threshold
    test_agreement: float | None = None  # share of test images decided as the Keras model decides them
    runtime: str = ""  # what ran it for the check ("LiteRT 2.3.0", "onnxruntime 1.23.2", ...)


@dataclass
class ExportOutcome:
    model_path: str  # the final model, ready to use: .keras, relative to the run folder
    sidecar_path: str  # its classes and threshold (<model>.classes.json)
    threshold: float  # the decision threshold it carries: the one chosen on the validation split
    threshold_rule: str
    exports: list[ExportedModel]
    test_accuracy: float | None = None  # the Keras model's own on the test split, at that threshold
    test_images: int = 0  # images of the test split every export's test_accuracy is measured on
    calibration_images: int = 0  # validation images an int8 export was calibrated on (0: none)


# --- report and run facts ----------------------------------------------------------------------


@dataclass
class ReportOutcome:
    markdown: str  # relative to the run folder
    html: str
    pdf: str
    engine: str  # "quarto" | "pandoc"


@dataclass
class StageFact:
    name: str
    status: str  # "done" | "skipped" (reused) | "failed" | "not run" | "off" (switched off by the config)
    wall_s: float  # summed over the attempts with the same inputs
    attempts: int = 1  # a stopped, failed or killed attempt and the one that resumed it: 2


@dataclass
class ConfigDifference:
    """One setting in which a run departs from the paper's protocol."""

    key: str  # dotted, e.g. "train.epochs"
    paper: Any  # the paper protocol's value (StudyConfig's default)
    run: Any  # this run's value


@dataclass
class LockInfo:
    """The lock a run's installed versions were compared with (chimuf's uv.lock)."""

    path: str
    digest: str  # SHA-256 of the lock file
    mismatches: list[str]  # installed dependencies at a version the lock does not pin; [] = as locked


@dataclass
class EnvironmentInfo:
    """What a run's numbers depend on besides config, seed and data (`chimuf compare` reads it)."""

    python: str
    packages: dict[str, str]  # every installed distribution chimuf needs, directly or not
    packages_digest: str  # SHA-256 over python and those name==version lines
    lock: LockInfo | None  # None: installed without chimuf's lock (e.g. a wheel in an own environment)
    cpu: str  # model name
    cpu_features: list[str]  # of AVX2, AVX-512, AVX-512 BF16, AMX ... (/proc/cpuinfo)
    onednn_isa: str  # the instruction set oneDNN says it dispatches to; "" when not known
    onednn_settings: dict[str, str]  # ONEDNN_MAX_CPU_ISA, TF_ENABLE_ONEDNN_OPTS, ... where set
    gpus: list[str]  # GPU names TensorFlow sees; [] on a CPU
    op_determinism: bool  # TensorFlow's op determinism was on (train.deterministic)
    precision: str = ""  # what the trainings computed in (train.precision resolved); "" in older runs
    precision_reason: str = ""  # why: the config said so, or "auto" and the GPU / CPU that decided


@dataclass
class RunInfo:
    run_id: str
    status: str  # "running" | "stopped" (--stop-after) | "finished" | "failed" | "interrupted"
    profile: str
    seed: int
    config: dict[str, Any]
    config_differences: list[ConfigDifference]
    data_dir: str
    data_digest: str
    packages: dict[str, str]
    hardware: str
    started_at: str
    updated_at: str
    stages: list[StageFact]
    chimuf_version: str = ""
    error: str = ""
    environment: EnvironmentInfo | None = None  # versions, lock, CPU, GPU, determinism; None in older runs
    commit: str = ""  # the git commit chimuf ran from; "" for an installed chimuf
    dirty: bool = False  # that checkout had changes not committed

    @classmethod
    def unnamed(cls) -> RunInfo:
        """No run's facts: for outcomes gathered outside a study (a tuning worker's)."""
        return cls("", "", "", 0, {}, [], "", "", {}, "", "", "", [])


@dataclass
class Results:
    schema_version: int
    run: RunInfo
    audit: AuditOutcome | None = None
    split: SplitOutcome | None = None
    cache: CacheOutcome | None = None
    train: TrainOutcome | None = None
    tune: TuneOutcome | None = None
    final: TrainingOutcome | None = None
    evaluate: EvaluateOutcome | None = None
    kfold: KFoldOutcome | None = None
    labels: LabelsOutcome | None = None
    explain: ExplainOutcome | None = None
    modern: TrainingOutcome | None = None
    pretrained: TrainingOutcome | None = None
    own: OwnOutcome | None = None
    beyond: BeyondOutcome | None = None
    choose: ChooseOutcome | None = None
    export: ExportOutcome | None = None


# The study's stages in the order they run: one outcome field of Results each, then the report.
ANALYSIS_STAGES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Results)
                                         if f.name not in ("schema_version", "run"))
STAGES: tuple[str, ...] = (*ANALYSIS_STAGES, "report")


# --- to and from JSON --------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and NaN-bearing floats as strict JSON values (NaN becomes null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return to_jsonable(value.item())
    return value


class LayoutError(ValueError):
    """JSON data that does not have the layout of the type it is read as: the key (dotted path),
    what the type wants and what was found. A ValueError, so every reader that already treats a
    ValueError as "another layout" (chimuf.core.engine.fitting_outcome) treats this one so too."""


def from_jsonable(cls: Any, data: Any, where: str = "") -> Any:
    """Rebuild a value of type `cls` (dataclass, list[...], dict, Optional, str, int, float, bool)
    from JSON data, checking every type on the way; LayoutError names the first key that does
    not fit (a wrong type, an unknown key, a missing one).

    Ints are accepted for floats and kept as ints (JSON keeps 48 and 48.0 apart, and a digest of
    the outcome must not change on a round trip); null is NaN for a float.
    """
    if cls is Any:
        return data
    if data is None:
        if cls is float:
            return float("nan")
        if type(None) in get_args(cls):
            return None
        raise LayoutError(f"`{where or 'the top level'}` is null; expected {type_words(cls)}")
    origin = get_origin(cls)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(cls) if a is not type(None)]
        for option in options[:-1]:
            try:
                return from_jsonable(option, data, where)
            except LayoutError:
                continue
        return from_jsonable(options[-1], data, where)
    if origin is list:
        (item,) = get_args(cls)
        expect(isinstance(data, list), cls, data, where)
        return [from_jsonable(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        _key, item = get_args(cls)
        expect(isinstance(data, dict), cls, data, where)
        return {k: from_jsonable(item, v, f"{where}.{k}" if where else k) for k, v in data.items()}
    if dataclasses.is_dataclass(cls):
        return dataclass_from_jsonable(cls, data, where)
    expect(is_plain(cls, data), cls, data, where)
    return data  # ints stay ints (JSON keeps 48 and 48.0 apart), so a round trip is exact


def dataclass_from_jsonable(cls: Any, data: Any, where: str) -> Any:
    expect(isinstance(data, dict), cls, data, where)
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in known:
            raise LayoutError(f"`{prefix}{key}` is not a field of {cls.__name__} "
                              f"(its fields: {', '.join(known)})")
    for name, f in known.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise LayoutError(f"`{prefix}{name}` is missing ({cls.__name__} needs it)")
    return cls(**{k: from_jsonable(hints[k], v, f"{prefix}{k}") for k, v in data.items()})


PLAIN_TYPES: dict[Any, tuple[type, ...]] = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


def is_plain(cls: Any, data: Any) -> bool:
    """`data` is a JSON value of the plain type `cls` (bool is not a number here)."""
    if cls not in PLAIN_TYPES:
        raise AssertionError(f"results type {cls!r} is not one from_jsonable reads")
    if cls is not bool and isinstance(data, bool):
        return False
    return isinstance(data, PLAIN_TYPES[cls])


def expect(ok: bool, cls: Any, data: Any, where: str) -> None:
    if not ok:
        shown = json.dumps(data, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise LayoutError(f"`{where or 'the top level'}` must be {type_words(cls)}, got {shown}")


def type_words(cls: Any) -> str:
    words = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    if cls in words:
        return words[cls]
    if get_origin(cls) is list:
        return "a list"
    if get_origin(cls) is dict or dataclasses.is_dataclass(cls):
        return f"an object ({getattr(cls, '__name__', 'dict')})"
    return str(cls)


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=1, ensure_ascii=False, allow_nan=False)


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON: the identity of an outcome or config slice."""
    text = json.dumps(to_jsonable(value), sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_results(text: str) -> Results:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise LayoutError("results.json must hold one JSON object (Results)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"results.json has schema_version {version!r}; this chimuf reads version "
            f"{SCHEMA_VERSION}. Rerun the study with this chimuf, or use a matching chimuf."
        )
    return from_jsonable(Results, data)

