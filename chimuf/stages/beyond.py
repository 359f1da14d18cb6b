"""Beyond the paper: how much its 2017-style choices leave on the table, on the same test split.

The paper's sections stay as the paper ran them; this stage sets beside the final model, on the
same test images, what a user of today would try next:

    the final model with test-time flips   (each image averaged with its left-right mirror)
    the modern recipe                       (chimuf.ml.architectures.modern; trained by the `modern` stage)
    the fold ensemble                       (the k k-fold models of the final architecture, averaged)
    the fold ensemble with the final model  (k + 1 models)
    the pretrained backbone, the user's own architectures (`own` stage), where trained
      ... each also with flips

For each: test accuracy (Wilson interval) and ROC AUC (BCa bootstrap interval), an exact
binomial test against always answering the majority class (is it better than guessing at all?),
and McNemar's test against the paper-protocol final model on the same images (is the difference
real?), Holm-adjusted over the rows. Every verdict is decided by chimuf.stats.evidence at
1 − `evaluate.confidence`, as the evaluation's are, and stored in the row. The rows are measured
on the test split, so picking the best of them there is a choice made after seeing the test: the
report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.config import EvaluateConfig, ModelFilesConfig
from chimuf.core.results import BeyondOutcome, BeyondRow
from chimuf.data.cache import load_images
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import averaged_probabilities
from chimuf.stats import evidence, intervals, metrics

if TYPE_CHECKING:

    import keras

    from chimuf.core.engine import StageContext
    from chimuf.core.results import (
        CacheOutcome,
        EvaluateOutcome,
        KFoldOutcome,
        OwnOutcome,
        SplitOutcome,
        TrainingOutcome,
    )

FINAL = "final"


@dataclass
class Candidate:
    name: str
    description: str
    models: list[keras.Model]
    paths: list[str]  # the members' files, run-relative
    # how the take-home choice scores it: "validation"; "out-of-fold" (its models were trained on
    # the validation images); "none" (no honest score: not eligible)
    scored_by: str = "validation"


@dataclass(frozen=True)
class Scored:
    """A candidate's score for the take-home choice: validation or out-of-fold, never test."""

    accuracy: float
    n: int
    source: str


def compare_beyond(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, final: TrainingOutcome,
                   evaluation: EvaluateOutcome, kfold: KFoldOutcome | None, modern: TrainingOutcome | None,
                   cfg: EvaluateConfig, seed: int, pretrained: TrainingOutcome | None = None,
                   limits: ModelFilesConfig | None = None, own: OwnOutcome | None = None) -> BeyondOutcome:
    """Every candidate's test metrics, with and without flips, against the final model's; the
    saved models are opened within `limits` (the study's model_files, as every stage opens them)."""
    images = load_images(cache)
    pixels = np.asarray(images.images[images.rows(split.test)], dtype=np.uint8)  # (N, S, S, 3)
    labels = np.asarray(images.labels)[images.rows(split.test)]
    classes = list(split.classes)
    val_pixels = np.asarray(images.images[images.rows(split.validation)], dtype=np.uint8)
    val_labels = np.asarray(images.labels)[images.rows(split.validation)]
    final_predicted = metrics.predict_labels(np.asarray(evaluation.predictions.probabilities))

    candidates = candidates_of(ctx, final, kfold, modern, pretrained, limits, own)
    first = row_of(FINAL, "the final model (the paper's protocol), as evaluated", 1, False,
                   labels, np.asarray(evaluation.predictions.probabilities), None, classes, cfg, seed)
    rows = [with_choice_facts(first, candidates[0], False,
                              validation_score(candidates[0], False, val_pixels, val_labels, kfold))]
    # (name, description, models, flips) of every row after the reference: the final model with
    # flips, then each other candidate without and with them
    runs = [(c, flips) for c in candidates for flips in (False, True)
            if not (c.name == FINAL and not flips)]
    with ctx.console.progress("beyond", total=len(runs), unit="comparisons") as progress:
        for candidate, flips in runs:
            p = averaged_probabilities(candidate.models, pixels, flips)  # (N,)
            name = f"{candidate.name} + flips" if flips else candidate.name
            row = row_of(name, candidate.description, len(candidate.models), flips, labels, p,
                         final_predicted, classes, cfg, seed)
            rows.append(with_choice_facts(row, candidate, flips,
                                          validation_score(candidate, flips, val_pixels, val_labels, kfold)))
            progress.update(1, name)
    rows = judged(rows, len(labels), cfg.confidence)
    for row in rows[1:]:
        ctx.console.info(row_line(row))
    majority = rows[0].chance.majority_rate if rows[0].chance else float("nan")
    return BeyondOutcome(n_images=len(labels), majority_rate=majority, rows=rows,
                         confidence=cfg.confidence)


def judged(rows: list[BeyondRow], n: int, confidence: float) -> list[BeyondRow]:
    """The rows with their McNemar verdicts against the final model, Holm-adjusted as one family."""
    tests = [r.vs_final for r in rows if r.vs_final is not None]
    accuracies = {r.name: r.accuracy for r in rows}
    by_name = {c.model_a: c for c in evidence.beyond_comparisons(tests, accuracies, n, confidence)}
    return [replace(r, versus_final=by_name.get(r.name)) for r in rows]


def row_line(row: BeyondRow) -> str:
    """The console's line of one row, with the stored verdicts."""
    chance, versus = row.chance, row.versus_final
    said = [f"  {row.name}: test accuracy {row.accuracy:.3f} [{row.accuracy_interval.low:.3f}, "
            f"{row.accuracy_interval.high:.3f}], ROC AUC {row.roc_auc:.3f}"]
    if chance is not None:
        said.append(f"{chance.verdict} (p = {chance.p_value:.3g})")
    if versus is not None:
        said.append(f"against the final model {versus.verdict} (McNemar p = {versus.p_value:.3g}, "
                    f"Holm-adjusted {versus.p_adjusted:.3g} over {versus.family_size})")
    return "; ".join(said)


def candidates_of(ctx: StageContext, final: TrainingOutcome, kfold: KFoldOutcome | None,
                  modern: TrainingOutcome | None,
                  pretrained: TrainingOutcome | None = None,
                  limits: ModelFilesConfig | None = None, own: OwnOutcome | None = None) -> list[Candidate]:
    """The models to set beside the final model: itself (for its flips), the modern recipe, the
    fold ensemble alone and with the final model; those that were not trained are left out."""
    def load(path: str) -> keras.Model:
        return modelfile.load_model(ctx.run_dir / path, limits, ctx.console)
    final_model = load(final.model_path)
    out = [Candidate(FINAL, "the final model", [final_model], [final.model_path])]
    if modern is not None:
        smaller = f", trained at {modern.trained_side} px" if modern.trained_side else ""
        out.append(Candidate("modern", f"the modern recipe (residual CNN, AdamW, cosine schedule{smaller})",
                             [load(modern.model_path)], [modern.model_path]))
    if pretrained is not None:
        out.append(Candidate("pretrained", "the pretrained baseline (an ImageNet backbone, fine-tuned)",
                             [load(pretrained.model_path)], [pretrained.model_path]))
    for training in own.trainings if own else []:
        out.append(Candidate(training.name, "the user's own architecture (candidates.builders)",
                             [load(training.model_path)], [training.model_path]))
    folds = [f for f in (kfold.folds if kfold else []) if f.status == "COMPLETED" and f.model_path]
    if len(folds) >= 2:
        members = [load(f.model_path) for f in folds]
        paths = [f.model_path for f in folds]
        out.append(Candidate("fold ensemble", f"the {len(members)} k-fold models of the final "
                                              "architecture, averaged", members, paths,
                             scored_by="out-of-fold"))
        out.append(Candidate("fold ensemble + final", f"the {len(members)} k-fold models and the final "
                                                      "model, averaged", [*members, final_model],
                             [*paths, final.model_path], scored_by="none"))
    return out


def validation_score(candidate: Candidate, flips: bool, pixels: np.ndarray, labels: np.ndarray,
                     kfold: KFoldOutcome | None) -> Scored:
    """What the take-home choice reads of a candidate. Models trained on train only: accuracy on the
    validation split. The fold ensembles, whose members were trained on the validation images: the
    out-of-fold accuracy over train+validation (each image scored by the fold model that did not see
    it: one member's honest score, flips not applied); with the final model among its members the
    ensemble has no honest score at all, so it is not eligible."""
    if candidate.scored_by == "validation":
        predicted = metrics.predict_labels(averaged_probabilities(candidate.models, pixels, flips))
        return Scored(metrics.accuracy(labels, predicted), len(labels), "validation")
    if candidate.scored_by == "none" or kfold is None or kfold.predictions is None:
        return Scored(float("nan"), 0, "none (its members saw the validation images, and no out-of-fold "
                                        "prediction covers the whole ensemble)")
    oof = kfold.predictions
    predicted = metrics.predict_labels(np.asarray(oof.probabilities))
    return Scored(metrics.accuracy(np.asarray(oof.labels), predicted), len(oof), "out-of-fold")


def with_choice_facts(row: BeyondRow, candidate: Candidate, flips: bool, score: Scored) -> BeyondRow:
    """The row with what the take-home choice reads: its validation score, its cost, its files."""
    passes = len(candidate.models) * (2 if flips else 1)
    params = sum(int(model.count_params()) for model in candidate.models) // len(candidate.models)
    return replace(row, validation_accuracy=score.accuracy, validation_n=score.n,
                   validation_source=score.source, cost=params * passes, model_paths=list(candidate.paths))


def row_of(name: str, description: str, models: int, flips: bool, labels: np.ndarray,
           probabilities: np.ndarray, final_predicted: np.ndarray | None, classes: list[str],
           cfg: EvaluateConfig, seed: int) -> BeyondRow:
    predicted = metrics.predict_labels(probabilities)
    spread = intervals.metric_intervals(labels, probabilities, samples=cfg.bootstrap_samples,
                                        confidence=cfg.confidence, seed=seed)
    versus = (None if final_predicted is None else
              metrics.mcnemar_test(labels, predicted, final_predicted, name, FINAL))
    chance = evidence.chance_test(labels, predicted, classes, 1 - cfg.confidence)
    return BeyondRow(name=name, description=description, models=models, flips=flips,
                     accuracy=metrics.accuracy(labels, predicted), accuracy_interval=spread.accuracy,
                     roc_auc=metrics.roc_auc(labels, probabilities), roc_auc_interval=spread.roc_auc,
                     chance_p_value=chance.p_value, vs_final=versus, chance=chance)
