"""Suspect labels (beyond the paper): confident learning on the k-fold's out-of-fold predictions.

A photo of a muffin filed under chihuahua teaches every model something false and costs every
test score an image. The k-fold stage has trained a model on every part of train+validation, so
each of those images has one honest probability, from a model that never saw it. Confident
learning (Northcutt et al., 2021; cleanlab's `find_label_issues`) estimates from those how often
each class is mislabelled as the other, and names the images most likely to be so:

    KFoldOutcome.predictions (P(classes[1]) out of fold) → (n, 2) class probabilities
      → cleanlab.filter.find_label_issues, ranked by self-confidence (the out-of-fold probability
        of the given label, lowest first)
      → SuspectLabel per image: given and suggested class, that probability, its fold and split,
        and any exact or near duplicate (audit) filed under the suggested class, which agrees
      → labels/suspect_labels.csv, and a thumbnail gallery of the first ones

The same stage draws the audit's duplicate groups as thumbnail strips (cross-class groups, the
same picture under two labels, first) with each file's class and split, and lists every group in
labels/duplicate_groups.csv: the other half of what a person checks when cleaning the labels.
Thumbnails come from the image cache; nothing is decoded again. cleanlab's result depends on the
probabilities only (it draws no random numbers), so the same k-fold gives the same suspects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import StageError
from chimuf.core.files import atomic_write_text, csv_text
from chimuf.core.results import DuplicateGroup, Figure, LabelsOutcome, SuspectLabel
from chimuf.data.cache import load_images
from chimuf.ml.plots.common import save_figure
from chimuf.ml.plots.explain_plots import draw_gallery
from chimuf.ml.plots.label_plots import STRIP_MAX, Strip, draw_strips
from chimuf.stats import evidence
from chimuf.stats.metrics import predict_labels

if TYPE_CHECKING:
    from chimuf.core.config import LabelsConfig
    from chimuf.core.engine import StageContext
    from chimuf.core.results import (
        AuditOutcome,
        CacheOutcome,
        ChanceTest,
        KFoldOutcome,
        Prediction,
        Predictions,
        SplitOutcome,
    )
    from chimuf.data.cache import ImageSet

METHOD = ("confident learning on the k-fold's out-of-fold probabilities (cleanlab find_label_issues, "
          "pruned by noise rate, ranked by self-confidence)")
# Fewer out-of-fold predictions than this in a class, and the noise rates cannot be estimated.
MIN_PER_CLASS = 5
GROUPS_PER_FIGURE = 12  # duplicate groups per figure: pairs pack three to a row, four rows a page


def check_labels(ctx: StageContext, cache: CacheOutcome, split: SplitOutcome, audit: AuditOutcome,
                 kfold: KFoldOutcome, cfg: LabelsConfig, confidence: float) -> LabelsOutcome:
    """Suspect labels from the out-of-fold predictions; the duplicate groups as pictures.

    `confidence` is the evaluation's level: the out-of-fold accuracy is tested against chance at
    1 − confidence, since models no better than guessing make suspects of half the labels."""
    predictions = check_predictions(kfold)
    images = load_images(cache)
    split_of = split.split_names()

    # 1. Which images the out-of-fold probabilities contradict, and whether those models beat
    #    guessing at all.
    suspects = suspects_of(predictions, kfold.fold_of, split_of, audit.duplicate_groups)
    oof_chance = chance_of(predictions, confidence)
    ctx.console.info(f"  {len(suspects)} suspect labels among {len(predictions)} images with an "
                     "out-of-fold prediction")
    if oof_chance is not None and not oof_chance.better_than_chance:
        ctx.console.warn(f"the out-of-fold accuracy ({oof_chance.accuracy:.3f}) is not distinguishable "
                         f"from always answering {oof_chance.majority_label} "
                         f"({oof_chance.majority_rate:.3f}): the suspect labels say little")

    # 2. Files for people: every suspect, every duplicate group.
    suspects_csv = ctx.dir / "suspect_labels.csv"
    atomic_write_text(suspects_csv, suspects_table(suspects))
    duplicates_csv = ctx.dir / "duplicate_groups.csv"
    atomic_write_text(duplicates_csv, duplicates_table(audit.duplicate_groups, split_of))

    # 3. Pictures: the first suspects, the first duplicate groups.
    shown = suspects[: cfg.shown]
    groups = shown_groups(audit.duplicate_groups, images, cfg.duplicate_groups)
    return LabelsOutcome(
        method=METHOD,
        n_checked=len(predictions),
        suspects=suspects,
        suspects_csv=ctx.rel(suspects_csv),
        suspects_figure=save_suspects_figure(ctx, images, shown, len(suspects)),
        n_shown=len(shown),
        duplicate_figures=save_duplicate_figures(ctx, images, groups, split_of,
                                                 len(audit.duplicate_groups)),
        n_groups_shown=len(groups),
        duplicates_csv=ctx.rel(duplicates_csv),
        oof_chance=oof_chance,
    )


def check_predictions(kfold: KFoldOutcome) -> Predictions:
    if kfold.predictions is None or len(kfold.fold_of) != len(kfold.predictions):
        raise StageError("the k-fold outcome of this run has no out-of-fold predictions (it was made "
                         "by an older chimuf); delete stages/kfold.json in the run folder and rerun "
                         "the study to redo the k-fold")
    return kfold.predictions


# --- 1. confident learning ---------------------------------------------------------------------


def suspects_of(predictions: Predictions, fold_of: Sequence[int], split_of: dict[str, str],
                groups: Sequence[DuplicateGroup]) -> list[SuspectLabel]:
    """The likely label errors among the out-of-fold predictions, most likely first."""
    labels = np.asarray(predictions.labels, dtype=np.int64)  # (n,) given class ids
    probabilities = np.asarray(predictions.probabilities, dtype=np.float64)  # (n,) P(classes[1])
    items = predictions.items()
    return [suspect(items[i], predictions.classes, fold_of[i], split_of, groups)
            for i in find_suspects(labels, probabilities)]


def chance_of(predictions: Predictions, confidence: float) -> ChanceTest | None:
    """The out-of-fold accuracy against always answering the majority class; None without images."""
    if not len(predictions):
        return None
    labels = np.asarray(predictions.labels, dtype=np.int64)
    predicted = predict_labels(np.asarray(predictions.probabilities), predictions.threshold)
    return evidence.chance_test(labels, predicted, predictions.classes, 1 - confidence)


def find_suspects(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the likely label errors, most likely first; empty when a class has too few
    images to estimate how often it is mislabelled.

    labels: (n,) given class ids 0/1; probabilities: (n,) out-of-fold P(classes[1]).
    """
    from cleanlab.filter import find_label_issues

    if len(labels) == 0 or np.bincount(labels, minlength=2).min() < MIN_PER_CLASS:
        return np.zeros(0, dtype=np.int64)
    p = np.clip(probabilities, 0.0, 1.0)
    pred_probs = np.stack([1 - p, p], axis=1)  # (n, 2): P(class 0), P(class 1)
    # n_jobs=1: cleanlab would otherwise fork workers from a process that runs TensorFlow.
    ranked = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate",
                               return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(ranked, dtype=np.int64)


def suspect(item: Prediction, classes: Sequence[str], fold: int, split_of: dict[str, str],
            groups: Sequence[DuplicateGroup]) -> SuspectLabel:
    """One out-of-fold prediction as a suspect, with the duplicates that agree with it: files of
    its duplicate groups filed under the class the prediction suggests."""
    given, suggested = classes[item.true_id], classes[1 - item.true_id]
    agreeing = sorted({path for g in groups if item.path in g.files
                       for path, label in zip(g.files, g.labels, strict=True) if label == suggested})
    return SuspectLabel(path=item.path, given_label=given, suggested_label=suggested,
                        probability_given=item.probability_true, fold=fold,
                        split=split_of.get(item.path, ""), agreeing_duplicates=agreeing)


# --- 2. the CSV files --------------------------------------------------------------------------


def suspects_table(suspects: Sequence[SuspectLabel]) -> str:
    """CSV, most suspicious first: rank, path, given and suggested label, the out-of-fold
    probability of the given label, fold, split, agreeing duplicates (separated by `;`)."""
    return csv_text(["rank", "path", "given_label", "suggested_label", "probability_given", "fold",
                     "split", "agreeing_duplicates"],
                    ([rank, s.path, s.given_label, s.suggested_label, f"{s.probability_given:.8f}",
                      s.fold, s.split, ";".join(s.agreeing_duplicates)]
                     for rank, s in enumerate(suspects, start=1)))


def duplicates_table(groups: Sequence[DuplicateGroup], split_of: dict[str, str]) -> str:
    """CSV, one row per file of each duplicate group (numbered as the audit lists them)."""
    return csv_text(["group", "kind", "cross_class", "path", "label", "split"],
                    ([number, g.kind, "yes" if g.cross_class else "no", path, label, split_of.get(path, "")]
                     for number, g in enumerate(groups, start=1)
                     for path, label in zip(g.files, g.labels, strict=True)))


# --- 3. the pictures ---------------------------------------------------------------------------


def pixels_of(images: ImageSet, paths: Sequence[str]) -> np.ndarray:
    """uint8 (k, S, S, 3): the cached pixels of `paths`, in that order."""
    return np.asarray(images.images[images.rows(list(paths))], dtype=np.uint8)


def save_suspects_figure(ctx: StageContext, images: ImageSet, shown: Sequence[SuspectLabel],
                         total: int) -> Figure | None:
    if not shown:
        return None
    texts = [suspect_text(rank, s) for rank, s in enumerate(shown, start=1)]
    path = save_figure(draw_gallery(pixels_of(images, [s.path for s in shown]), texts),
                       ctx.dir / "suspect_labels.png")
    some = f"the {len(shown)} most suspicious of" if len(shown) < total else "all"
    return Figure(ctx.rel(path), f"Suspect labels, {some} {total}: the images whose out-of-fold "
                                 "probability of their given label is lowest, numbered as in the "
                                 "table; under each, its given label, that probability, its fold, "
                                 "and whether a duplicate filed under the other class agrees.")


def suspect_text(rank: int, s: SuspectLabel) -> str:
    twin = f"duplicate in {s.suggested_label}" if s.agreeing_duplicates else "no duplicate agrees"
    return f"#{rank} given {s.given_label}\nP(given) = {s.probability_given:.2f}, fold {s.fold}\n{twin}"


def shown_groups(groups: Sequence[DuplicateGroup], images: ImageSet,
                 limit: int) -> list[tuple[int, DuplicateGroup]]:
    """The first `limit` groups (numbered as the audit lists them), cross-class groups first, each
    cut to the files the cache holds (all usable files are cached)."""
    cached = set(images.paths)
    order = sorted(enumerate(groups, start=1), key=lambda item: (not item[1].cross_class, item[0]))
    out = []
    for number, g in order:
        kept = [(path, label) for path, label in zip(g.files, g.labels, strict=True) if path in cached]
        if len(kept) >= 2 and len(out) < limit:
            out.append((number, DuplicateGroup(g.kind, [p for p, _ in kept], [lb for _, lb in kept],
                                               g.cross_class)))
    return out


def save_duplicate_figures(ctx: StageContext, images: ImageSet, groups: Sequence[tuple[int, DuplicateGroup]],
                           split_of: dict[str, str], total: int) -> list[Figure]:
    """The groups as framed strips, GROUPS_PER_FIGURE per figure: each file's class and split
    under it, cross-class groups framed in red."""
    figures = []
    for start in range(0, len(groups), GROUPS_PER_FIGURE):
        chunk = groups[start: start + GROUPS_PER_FIGURE]
        strips = [Strip(title=f"group {number}, {g.kind}" + (", cross-class" if g.cross_class else ""),
                        images=pixels_of(images, g.files[:STRIP_MAX]),
                        labels=[f"{label} · {split_of.get(path, '?')}"
                                for path, label in zip(g.files[:STRIP_MAX], g.labels, strict=False)],
                        more=max(0, len(g.files) - STRIP_MAX), cross_class=g.cross_class)
                  for number, g in chunk]
        path = save_figure(draw_strips(strips), ctx.dir / f"duplicates_{start // GROUPS_PER_FIGURE + 1}.png")
        numbers = ", ".join(str(number) for number, _ in chunk)
        figures.append(Figure(ctx.rel(path), f"Duplicate groups {numbers} of {total} (cross-class groups "
                                             "first, framed in red): each picture with its class and "
                                             "split."))
    return figures
