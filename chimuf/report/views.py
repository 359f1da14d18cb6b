"""Views of a run's results that the templates would find clumsy to write in Jinja.

Which training was best, the rows of every table, and the paper's headline numbers beside the
run's. Everything here selects, arranges and
compares numbers that a stage computed and saved in results.json; nothing is measured again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chimuf.core.config import flatten
from chimuf.core.hyperparameters import LABEL, PAPER_BEST
from chimuf.core.results import (
    ANALYSIS_STAGES,
    AuditOutcome,
    ClassMetrics,
    ConfigDifference,
    DuplicateGroup,
    EvaluateOutcome,
    ExplainedImage,
    FileRecord,
    FoldOutcome,
    LayerRow,
    McNemarTest,
    Results,
    SearchDimension,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
    Trial,
    TuneOutcome,
)
from chimuf.report.blocks import (
    architecture,
    count,
    hyperparameters,
    is_missing,
    num,
    plain,
    seconds,
    strong,
    table,
    with_interval,
    yesno,
)
from chimuf.report.escape import Trusted

# --- which stages, which trainings, which figures ----------------------------------------------


def class_names(results: Results) -> list[str]:
    for outcome in (results.evaluate, results.split, results.audit):
        if outcome is not None:
            return list(outcome.classes)
    return []


def missing_stages(results: Results) -> list[str]:
    return [name for name in ANALYSIS_STAGES if getattr(results, name) is None]


def architectures(train: TrainOutcome) -> list[TrainingOutcome]:
    """One training per architecture, in order, preferring the one without augmentation.

    Its layer table is the architecture's (the augmentation layers, where a model carries them,
    are a detail of the training, not of the architecture).
    """
    chosen: dict[str, TrainingOutcome] = {}
    for t in sorted(train.trainings, key=lambda t: (t.architecture, t.augmented)):
        chosen.setdefault(t.architecture, t)
    return list(chosen.values())


def best_training(train: TrainOutcome) -> TrainingOutcome | None:
    """The training with the highest best validation accuracy (the paper's 5.5)."""
    scored = [t for t in train.trainings if not is_missing(t.best_val_accuracy)]
    return max(scored, key=lambda t: t.best_val_accuracy, default=None)


def augmentation_pairs(train: TrainOutcome) -> list[tuple[str, TrainingOutcome, TrainingOutcome]]:
    """(architecture, without, with) for every architecture trained both ways (paper 5.4)."""
    pairs = []
    for arch in sorted({t.architecture for t in train.trainings}):
        plain_run = next((t for t in train.trainings if t.architecture == arch and not t.augmented), None)
        augmented = next((t for t in train.trainings if t.architecture == arch and t.augmented), None)
        if plain_run is not None and augmented is not None:
            pairs.append((arch, plain_run, augmented))
    return pairs


# --- the paper's own figures (paper.txt sections 6 and 7) beside the run's ---------------------


@dataclass(frozen=True)
class PaperFigures:
    """The paper's numbers, as it prints them."""

    test_images: str = "1,184"
    accuracy: str = "0.94"
    roc_auc: str = "0.983"
    # class → (precision, recall, F1), section 7.1
    per_class: tuple[tuple[str, str, str, str], ...] = (
        ("chihuahua", "0.92", "0.97", "0.95"),
        ("muffin", "0.97", "0.90", "0.94"),
    )
    # section 6: chimuf.core.hyperparameters.PAPER_BEST; what the paper calls two of them
    paper_names: tuple[tuple[str, str], ...] = (("dropout_conv", "hidden layer"),
                                                ("dropout_dense", "flatten layer"))


PAPER = PaperFigures()

OTHER_DATA = "n/a (other data)"


def paper_rows(results: Results) -> list[list[object]]:
    """The paper's headline numbers beside this run's (with its intervals).

    The paper's column applies only to its own data: when the run's classes are not chihuahua
    and muffin (matched case-insensitively), it reads "n/a (other data)".
    """
    classes = class_names(results)
    same_data = sorted(c.lower() for c in classes) == ["chihuahua", "muffin"]

    def paper_value(value: str) -> str:
        return value if same_data else OTHER_DATA

    e, tune = results.evaluate, results.tune
    rows: list[list[object]] = [
        ["Test images", paper_value(PAPER.test_images), count(e.n_images if e else None)],
        ["Accuracy", paper_value(PAPER.accuracy),
         with_interval(e.accuracy, e.accuracy_interval) if e else num(None)],
        ["ROC AUC", paper_value(PAPER.roc_auc),
         with_interval(e.roc_auc, e.roc_auc_interval) if e else num(None)],
    ]
    for label, precision, recall, f1 in PAPER.per_class:
        metrics = class_metrics(e, label) if e else None
        shown = metrics.label if metrics else label
        rows += [
            [f"Precision, {shown}", paper_value(precision), num(metrics.precision if metrics else None)],
            [f"Recall, {shown}", paper_value(recall), num(metrics.recall if metrics else None)],
            [f"F1, {shown}", paper_value(f1),
             with_interval(metrics.f1, metrics.f1_interval) if metrics else num(None)],
        ]
    best = tune.best_hyperparameters if tune else {}
    called = dict(PAPER.paper_names)
    for key, value in PAPER_BEST.items():
        label = LABEL[key] + (f" (paper: {called[key]})" if key in called else "")
        rows.append([f"Best {label[0].lower()}{label[1:]}", paper_value(plain(value)), plain(best.get(key))])
    return rows


def class_metrics(e: EvaluateOutcome, label: str) -> ClassMetrics | None:
    return next((m for m in e.per_class if m.label.lower() == label), None)


# --- table rows, one helper per table of the templates -----------------------------------------


def audit_count_rows(audit: AuditOutcome) -> list[list[object]]:
    rows: list[list[object]] = [[c.label, count(c.usable), count(c.converted), count(c.rejected)]
                                for c in audit.counts]
    total = [sum(getattr(c, k) for c in audit.counts) for k in ("usable", "converted", "rejected")]
    return [*rows, [strong("all"), *(strong(count(n)) for n in total)]]


def file_rows(files: Sequence[FileRecord]) -> list[list[object]]:
    return [[f.path, f.label, f.reason] for f in files]


def duplicate_rows(groups: Sequence[DuplicateGroup]) -> list[list[object]]:
    return [[g.kind, "; ".join(g.files), ", ".join(sorted(set(g.labels))),
             strong("cross-class") if g.cross_class else "no"] for g in groups]


def split_rows(split: SplitOutcome) -> list[list[object]]:
    rows: list[list[object]] = [[c.label, count(c.train), count(c.validation), count(c.test),
                                 count(c.train + c.validation + c.test)] for c in split.counts]
    totals = [sum(getattr(c, k) for c in split.counts) for k in ("train", "validation", "test")]
    return [*rows, [strong("all"), *(strong(count(n)) for n in (*totals, sum(totals)))]]


def layer_table(layers: Sequence[LayerRow]) -> Trusted:
    return table(["Layer", "Type", "Output shape", "Parameters"],
                 [[row.name, row.kind, row.output_shape, count(row.params)] for row in layers],
                 "lllr")


def training_rows(trainings: Sequence[TrainingOutcome]) -> list[list[object]]:
    return [[t.name, yesno(t.augmented), num(t.best_val_accuracy), num(t.best_val_loss),
             f"{t.epochs_run}{', stopped early' if t.stopped_early else ''}", t.best_epoch,
             seconds(t.wall_s), num(t.images_per_s, 0)]
            for t in trainings]


def pair_rows(pairs: Sequence[tuple[str, TrainingOutcome, TrainingOutcome]]) -> list[list[object]]:
    return [[architecture(arch), num(a.best_val_accuracy), num(b.best_val_accuracy),
             num(a.best_val_loss), num(b.best_val_loss)] for arch, a, b in pairs]


def search_rows(space: Sequence[SearchDimension]) -> list[list[object]]:
    return [[d.name, plain(d.values)] for d in space]


def trial_table(tune: TuneOutcome) -> Trusted:
    """One row per trial; its hyperparameters in one cell (there may be many of them)."""
    rows = [[trial.trial_id, trial.status, hyperparameters(trial.hyperparameters), num(trial.score, 4),
             trial.epochs, seconds(trial.wall_s)] for trial in tune.trials]
    return table(["Trial", "Status", "Hyperparameters", tune.objective, "Epochs", "Wall time"], rows,
                 "lllrrr")


def failed_trial_rows(trials: Sequence[Trial]) -> list[list[object]]:
    return [[t.trial_id, t.status, t.error or "no error message"] for t in trials]


def hyperparameter_rows(values: Mapping[str, float]) -> list[list[object]]:
    return [[k, plain(v)] for k, v in values.items()]


def confusion_table(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> Trusted:
    """Rows true class, columns predicted class, in `classes` order (as results.json keeps it)."""
    header = ["True ↓ / predicted →", *classes]
    rows = [[strong(label), *(count(n) for n in row)] for label, row in zip(classes, matrix, strict=False)]
    return table(header, rows, "l" + "r" * len(classes))


def class_rows(per_class: Sequence[ClassMetrics]) -> list[list[object]]:
    return [[m.label, num(m.precision), num(m.recall), with_interval(m.f1, m.f1_interval), count(m.support)]
            for m in per_class]


def threshold_table(e: EvaluateOutcome) -> Trusted:
    """Test accuracy and per-class recall at 0.5 and at the validation-chosen threshold."""
    t = e.at_validation_threshold
    header = ["Threshold", "Test accuracy", *(f"Recall, {label}" for label in e.classes)]
    at_half = [num(e.threshold), num(e.accuracy), *(num(m.recall) for m in e.per_class)]
    chosen = [num(t.threshold), num(t.accuracy), *(num(m.recall) for m in t.per_class)]
    return table(header, [at_half, chosen], "r" * len(header))


def mcnemar_rows(tests: Sequence[McNemarTest]) -> list[list[object]]:
    return [[m.model_a, m.model_b, count(m.only_a_right), count(m.only_b_right), m.method or "n/a",
             num(m.statistic), num(m.p_value, 4)] for m in tests]


def fold_rows(folds: Sequence[FoldOutcome]) -> list[list[object]]:
    return [[f.fold, f.status, count(f.n_train), count(f.n_validation), num(f.accuracy), num(f.loss),
             f.epochs_run, seconds(f.wall_s)] for f in folds]


def misclassified_rows(images: Sequence[ExplainedImage]) -> list[list[object]]:
    return [[m.path, m.true_label, m.predicted_label, num(m.probability_true)] for m in images]


def difference_rows(differences: Sequence[ConfigDifference]) -> list[list[object]]:
    return [[d.key, plain(d.paper), plain(d.run)] for d in differences]


def stage_rows(results: Results) -> list[list[object]]:
    """Every stage of the study with its status and wall time; stages never started: "not run".

    The report stage itself is listed only once a run has recorded it (it is running now)."""
    facts = {f.name: f for f in results.run.stages}
    rows: list[list[object]] = []
    for name in ANALYSIS_STAGES:
        fact = facts.pop(name, None)
        rows.append([name, fact.status, seconds(fact.wall_s), fact.attempts] if fact else
                    [name, "not run", "", ""])
    rows += [[f.name, f.status, seconds(f.wall_s), f.attempts] for f in facts.values()]
    return rows


def config_rows(results: Results) -> list[list[object]]:
    """The run's whole config, flattened; keys that differ from the paper's protocol in bold."""
    differing = {d.key for d in results.run.config_differences}
    rows: list[list[object]] = []
    for key, value in flatten(results.run.config).items():
        cells = [key, plain(value)]
        rows.append([strong(c) for c in cells] if key in differing else cells)
    return rows


def environment_rows(results: Results) -> list[list[object]]:
    """What the numbers depend on besides config, seed and data: lock, versions, CPU, GPU,
    determinism (rows for the run-facts table; none for runs made before they were recorded)."""
    env = results.run.environment
    if env is None:
        return []
    if env.lock is None:
        lock = "none: installed without chimuf's uv.lock"
    elif env.lock.mismatches:
        lock = f"{env.lock.digest or 'unreadable'}; differs in {'; '.join(env.lock.mismatches)}"
    else:
        lock = f"{env.lock.digest}; every dependency installed as locked"
    settings = ", ".join(f"{k}={v}" for k, v in env.onednn_settings.items())
    return [
        ["Lock (uv.lock, SHA-256)", lock],
        ["Installed dependencies", f"{len(env.packages)}, SHA-256 of their versions {env.packages_digest}"],
        ["CPU instruction sets", ", ".join(env.cpu_features) or "none of AVX2, AVX-512, AMX"],
        ["oneDNN kernels for", env.onednn_isa or "not known (oneDNN had not answered)"],
        ["oneDNN settings", settings or "defaults"],
        ["GPUs", ", ".join(env.gpus) or "none (CPU only)"],
        ["TensorFlow op determinism", "on" if env.op_determinism else "off"],
    ]


def dependency_list(packages: Mapping[str, str]) -> str:
    """Every installed dependency as one line of text: "absl-py 2.5.1, astunparse 1.6.3, ..."."""
    return ", ".join(f"{name} {version}" for name, version in sorted(packages.items()))
