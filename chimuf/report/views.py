"""Views of a run's results that the templates would find clumsy to write in Jinja.

Which training was best, the rows of every table, and the paper's headline numbers beside the
run's. Everything here selects, arranges and
compares numbers that a stage computed and saved in results.json; nothing is measured again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chimuf.core.config import flatten
from chimuf.core.hyperparameters import LABEL, PAPER_BEST
from chimuf.core.paper import PAPER, same_data
from chimuf.core.proportions import alpha_of
from chimuf.core.results import (
    ANALYSIS_STAGES,
    AuditOutcome,
    BeyondOutcome,
    BeyondRow,
    ChooseOutcome,
    ClassMetrics,
    Comparison,
    ConfigDifference,
    DuplicateGroup,
    EvaluateOutcome,
    ExportOutcome,
    FileRecord,
    FoldOutcome,
    LabelsOutcome,
    LayerRow,
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
    num,
    plain,
    seconds,
    strong,
    table,
    with_interval,
    yesno,
)
from chimuf.report.escape import Trusted, markdown_text

# --- which stages, which trainings, which figures ----------------------------------------------


def class_names(results: Results) -> list[str]:
    for outcome in (results.evaluate, results.split, results.audit):
        if outcome is not None:
            return list(outcome.classes)
    return []


def switched_off(results: Results) -> set[str]:
    """The stages the run's config switched off."""
    return {f.name for f in results.run.stages if f.status == "off"}


def missing_stages(results: Results) -> list[str]:
    off = switched_off(results)
    return [name for name in ANALYSIS_STAGES if getattr(results, name) is None and name not in off]


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
    return train.best()


def augmentation_pairs(train: TrainOutcome) -> list[tuple[str, TrainingOutcome, TrainingOutcome]]:
    """(architecture, without, with) for every architecture trained both ways (paper 5.4)."""
    return train.augmentation_pairs()


# --- the paper's own figures (chimuf.core.paper) beside the run's -------------------------------

OTHER_DATA = "n/a (other data)"


def paper_rows(results: Results) -> list[list[object]]:
    """The paper's headline numbers beside this run's (with its intervals).

    The paper's column applies only to its own data: when the run's classes are not chihuahua
    and muffin (matched case-insensitively), it reads "n/a (other data)".
    """
    paper_data = same_data(class_names(results))

    def paper_value(value: str) -> str:
        return value if paper_data else OTHER_DATA

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


def outside_test(audit: AuditOutcome) -> int:
    """Images outside the test set that near-duplicate a test image (the audit's test_duplicates)."""
    in_test = {r.path for r in audit.files if r.split == "test"}
    return len({p for g in audit.test_duplicates for p in g.files if p not in in_test})


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


def search_rows(space: Sequence[SearchDimension]) -> list[list[object]]:
    return [[d.name, plain(d.values)] for d in space]


def trial_table(tune: TuneOutcome) -> Trusted:
    """One row per trial; its hyperparameters in one cell (there may be many of them)."""
    rows = [[trial.trial_id, trial.status, hyperparameters(trial.hyperparameters), num(trial.score, 4),
             f"{trial.epochs}{', pruned' if trial.pruned else ''}", seconds(trial.wall_s)]
            for trial in tune.trials]
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
    return [[m.label, with_interval(m.precision, m.precision_interval),
             with_interval(m.recall, m.recall_interval), with_interval(m.f1, m.f1_interval), count(m.support)]
            for m in per_class]


def imbalance_rows(e: EvaluateOutcome) -> list[list[object]]:
    """Balanced accuracy, average precision and Brier score with their intervals and methods;
    empty for runs made before they were measured."""
    named = [("Balanced accuracy (mean of the two recalls)", e.balanced_accuracy,
              e.balanced_accuracy_interval),
             (f"Average precision ({e.classes[-1]} as positive)", e.average_precision,
              e.average_precision_interval),
             ("Brier score (0 is perfect, 0.25 a constant 0.5)", e.brier_score, e.brier_interval)]
    return [[name, with_interval(value, interval), interval.method if interval else ""]
            for name, value, interval in named if value == value]


def interval_methods(e: EvaluateOutcome) -> str:
    """"Wilson" and "BCa bootstrap", as the evaluation recorded them (older runs: "bootstrap")."""
    methods = [i.method for i in (e.accuracy_interval, e.roc_auc_interval) if i is not None and i.method]
    return " and ".join(dict.fromkeys(methods)) or "bootstrap"


def threshold_table(e: EvaluateOutcome) -> Trusted:
    """Test accuracy and per-class recall at 0.5 and at the validation-chosen threshold."""
    t = e.at_validation_threshold
    header = ["Threshold", "Test accuracy", *(f"Recall, {label}" for label in e.classes)]
    at_half = [num(e.threshold), num(e.accuracy), *(num(m.recall) for m in e.per_class)]
    chosen = [num(t.threshold), num(t.accuracy), *(num(m.recall) for m in t.per_class)]
    return table(header, [at_half, chosen], "r" * len(header))


def mcnemar_rows(e: EvaluateOutcome) -> list[list[object]]:
    """Each McNemar test with its verdict at the evaluation's level (from its Comparison)."""
    judged = {(c.model_a, c.model_b): c for c in e.comparisons if c.split == "test" and c.p_value is not None}
    rows: list[list[object]] = []
    for m in e.mcnemar:
        c = judged.get((m.model_a, m.model_b))
        rows.append([m.model_a, m.model_b, count(m.only_a_right), count(m.only_b_right), m.method or "n/a",
                     num(m.statistic), num(m.p_value, 4), adjusted_cell(c), verdict_cell(c)])
    return rows


def verdict_cell(c: Comparison | None) -> Trusted:
    if c is None:
        return Trusted("n/a")
    return strong(c.verdict) if c.distinguishable else Trusted(c.verdict)


def adjusted_cell(c: Comparison | None) -> Trusted:
    """"0.0134 (Holm, 3)": the p value the verdict was decided on, and the family's size."""
    if c is None or c.p_adjusted is None:
        return Trusted("n/a")
    family = f" (Holm, {c.family_size})" if c.family_size > 1 else ""
    return Trusted(markdown_text(f"{c.p_adjusted:.4f}{family}"))


def difference_cell(c: Comparison | None) -> Trusted:
    """"+0.112 [+0.051, +0.170]": a difference of accuracies and its interval."""
    if c is None or c.interval is None:
        return Trusted("n/a")
    return Trusted(markdown_text(f"{c.difference:+.3f} [{c.interval.low:+.3f}, {c.interval.high:+.3f}]"))


def augmentation_rows(pairs: Sequence[tuple[str, TrainingOutcome, TrainingOutcome]],
                      e: EvaluateOutcome | None) -> list[list[object]]:
    """Per architecture: validation accuracy without and with augmentation, their difference with
    its interval, and the verdict on validation and on test (McNemar)."""
    validation = {c.model_a: c for c in e.compared("augmentation", "validation")} if e else {}
    test = {c.model_a: c for c in e.compared("augmentation", "test")} if e else {}
    rows: list[list[object]] = []
    for arch, a, b in pairs:
        v, t = validation.get(b.name), test.get(b.name)
        rows.append([architecture(arch), num(a.best_val_accuracy), num(b.best_val_accuracy),
                     difference_cell(v), verdict_cell(v), num(t.p_value, 4) if t else Trusted("n/a"),
                     verdict_cell(t)])
    return rows


def best_rows(e: EvaluateOutcome) -> list[list[object]]:
    """The best of the six against each other training on validation."""
    return [[c.model_b, num(c.accuracy_b), difference_cell(c), adjusted_cell(c), verdict_cell(c)]
            for c in e.compared("best_training")]


def suspect_rows(labels: LabelsOutcome, limit: int) -> list[list[object]]:
    """The first suspects, numbered as on their thumbnails."""
    return [[rank, s.path, s.given_label, num(s.probability_given), s.fold,
             "; ".join(s.agreeing_duplicates) if s.agreeing_duplicates else "no"]
            for rank, s in enumerate(labels.suspects[:limit], start=1)]


def fold_rows(folds: Sequence[FoldOutcome]) -> list[list[object]]:
    return [[f.fold, f.status, count(f.n_train), count(f.n_validation), num(f.accuracy), num(f.loss),
             f.epochs_run, seconds(f.wall_s)] for f in folds]


def beyond_rows(beyond: BeyondOutcome) -> list[list[object]]:
    """One row per classifier: accuracy and AUC with intervals, the chance test, McNemar, each
    with the verdict the beyond stage stored (runs made before it: the p value only)."""
    rows = []
    for row in beyond.rows:
        p = markdown_text(f"(p = {row.chance_p_value:.2g})")
        if row.chance is None:
            chance = Trusted(f"not recorded {p}")
        else:
            chance = Trusted(f"{row.chance.verdict} {p}" if row.chance.better_than_chance
                             else f"{strong(row.chance.verdict)} {p}")
        rows.append([row.name, row.models, with_interval(row.accuracy, row.accuracy_interval),
                     with_interval(row.roc_auc, row.roc_auc_interval), chance, versus_cell(row)])
    return rows


def versus_cell(row: BeyondRow) -> str:
    if row.vs_final is None:
        return "(the reference)"
    c = row.versus_final
    if c is None:
        return f"not recorded (p = {row.vs_final.p_value:.2g})"
    holm = f", Holm {c.p_adjusted:.2g}" if c.family_size > 1 and c.p_adjusted is not None else ""
    said = f"{c.verdict} (p = {c.p_value:.2g}{holm})"
    return f"{'better' if c.difference > 0 else 'worse'}, {said}" if c.distinguishable else said


def beyond_verdict(beyond: BeyondOutcome) -> str:
    """One sentence on which rows differ from the final model, from the stored verdicts."""
    judged = [r.versus_final for r in beyond.rows if r.versus_final is not None]
    if not judged:
        return ""
    better = [c.model_a for c in judged if c.distinguishable and c.difference > 0]
    worse = [c.model_a for c in judged if c.distinguishable and c.difference <= 0]
    family = f", Holm-adjusted over the {len(judged)} rows" if len(judged) > 1 else ""
    how = f"McNemar's test{family}, decided at {alpha_of(beyond.confidence):g}"
    if not better and not worse:
        return ("None of them differs from the final model by more than chance allows on this test "
                f"split ({how}).")
    parts = []
    if better:
        parts.append(f"better than the final model beyond chance: {', '.join(better)}")
    if worse:
        parts.append(f"worse than it beyond chance: {', '.join(worse)}")
    return f"By {how}: " + "; ".join(parts) + "."


def candidate_rows(choice: ChooseOutcome) -> list[list[object]]:
    """One row per candidate of the take-home choice: what the rule read, and which one it chose."""
    rows = []
    for row in choice.candidates:
        scored = row.validation_accuracy == row.validation_accuracy  # not NaN
        score = f"{row.validation_accuracy:.3f} ({row.validation_source}, {count(row.validation_n)})" \
            if scored else f"not eligible: {row.validation_source}"
        rows.append([strong(row.name) if row.name == choice.chosen else row.name, score,
                     count(row.cost), "chosen" if row.name == choice.chosen else ""])
    return rows


def chosen_row(choice: ChooseOutcome) -> BeyondRow:
    """The chosen candidate's row: its test numbers, measured once by the beyond stage."""
    return next(row for row in choice.candidates if row.name == choice.chosen)


def versus_final(row: BeyondRow) -> str:
    """McNemar's test of a candidate against the paper's final model, in the words the beyond stage
    stored (decided once, at the run's confidence, Holm-adjusted over the rows: chimuf.stats)."""
    if row.vs_final is None:
        return "It is the paper's final model itself."
    t, c = row.vs_final, row.versus_final
    counts = f"{t.only_a_right} images only it got right, {t.only_b_right} only the final model"
    if c is None:  # a run made before the verdicts were stored: the numbers alone
        return (f"McNemar's test against the paper's final model on the same test images: "
                f"p = {t.p_value:.2g}; {counts}.")
    said = f"{'better' if c.difference > 0 else 'worse'}, {c.verdict}" if c.distinguishable else c.verdict
    p = c.p_adjusted if c.p_adjusted is not None else c.p_value
    return (f"McNemar's test against the paper's final model on the same test images: {said} "
            f"(p = {p:.2g}{', Holm-adjusted' if c.p_adjusted is not None else ''}; {counts}).")


def export_rows(export: ExportOutcome) -> list[list[object]]:
    """Each export: format, quantization, file, size, its largest difference from the Keras model on
    the checked images, and its accuracy on the test split (and how often it decides as Keras does)."""
    def on_test(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    return [[e.format, e.quantization or "no", e.path, f"{e.size_bytes / 2**20:.2f} MiB",
             count(e.images_checked), f"{e.max_abs_difference:.1e}", on_test(e.test_accuracy),
             on_test(e.test_agreement)] for e in export.exports]


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
        *([["Training precision", f"{env.precision}: {env.precision_reason}"]] if env.precision else []),
    ]


def dependency_list(packages: Mapping[str, str]) -> str:
    """Every installed dependency as one line of text: "absl-py 2.5.1, astunparse 1.6.3, ..."."""
    return ", ".join(f"{name} {version}" for name, version in sorted(packages.items()))
