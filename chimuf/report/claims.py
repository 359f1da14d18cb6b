"""What the data support, in words: the conclusion, the verdicts of the report, the headline.

Every sentence here is written from facts a stage stored (chimuf.stats.evidence: the chance test,
the comparisons with their intervals and p-values; chimuf.data.split: how finely each split can
measure), never from a fixed list: "best", "helped" and "improved" appear only when the evidence
says the difference is more than noise, and when the final model is not better than guessing,
that comes first. Nothing is measured here.

Sentences are plain text (`Claim`), so the console's headline and the report say the same thing;
the report escapes them (`markdown`), the console prints them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chimuf.core.headline import Number, headline_numbers, number_of
from chimuf.core.results import (
    ChanceTest,
    Comparison,
    EvaluateOutcome,
    KFoldOutcome,
    LabelsOutcome,
    Results,
    SplitOutcome,
    SplitPrecision,
    TrainOutcome,
)
from chimuf.report.blocks import architecture, hyperparameters, is_missing
from chimuf.report.escape import Trusted, markdown_text


@dataclass(frozen=True)
class Claim:
    """One paragraph: an optional lead said first (bold in the report), then the detail."""

    lead: str
    text: str = ""

    def plain(self) -> str:
        return f"{self.lead} {self.text}".strip()

    def markdown(self) -> Trusted:
        lead = f"**{markdown_text(self.lead)}**" if self.lead else ""
        return Trusted(f"{lead} {markdown_text(self.text)}".strip())


# --- numbers as the sentences write them -------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if is_missing(x) else f"{x:.{digits}f}"


def p_text(p: float | None) -> str:
    if is_missing(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


def evidence(c: Comparison) -> str:
    """"difference +0.112 [0.051, 0.170]" (an interval) or "McNemar p = 0.004" (a test), then
    the Holm-adjusted p the verdict was decided on when the comparison is one of a family."""
    family = (f", Holm-adjusted {p_text(c.p_adjusted)} over {c.family_size}"
              if c.family_size > 1 and c.p_adjusted is not None else "")
    if c.interval is not None:
        return (f"difference {signed(c.difference)} [{signed(c.interval.low)}, "
                f"{signed(c.interval.high)}]{family}")
    return f"McNemar {p_text(c.p_value)}{family}"


def verdict(c: Comparison) -> str:
    return c.verdict


def level(confidence: float) -> str:
    return f"{confidence * 100:.0f} %"


# --- chance ------------------------------------------------------------------------------------


def chance_claim(chance: ChanceTest, e: EvaluateOutcome) -> Claim:
    """The final model's test accuracy against always answering the majority class."""
    detail = (f"It classified {chance.correct} of {chance.n} test images correctly (accuracy "
              f"{fmt(e.accuracy)} [{fmt(e.accuracy_interval.low)}, {fmt(e.accuracy_interval.high)}]); "
              f"always answering {chance.majority_label} would score {fmt(chance.majority_rate)} on the "
              f"same images, and an exact binomial test gives {p_text(chance.p_value)}")
    if chance.better_than_chance:
        return Claim(f"The final model is {chance.verdict}.", detail + ".")
    return Claim(f"The final model is {chance.verdict}.",
                 detail + f" (above the {chance.alpha:g} level): every other number of this run "
                 "should be read with that in mind.")


# --- small splits ------------------------------------------------------------------------------


def small_splits(split: SplitOutcome | None) -> list[SplitPrecision]:
    return [p for p in split.precision if p.small] if split is not None else []


def small_data_claim(small: Sequence[SplitPrecision], kfold: KFoldOutcome | None) -> Claim:
    """Which splits are too small to resolve an accuracy to ± their limit, and what would help."""
    first = small[0]
    which = " and ".join(f"the {p.split} split ({p.n} images, up to ±{p.half_width * 100:.1f} points)"
                         for p in small)
    estimate = ("take the k-fold mean as the main estimate" if kfold is None else
                f"the k-fold mean, {fmt(kfold.mean_accuracy)} ± {fmt(kfold.std_accuracy)} over "
                f"{len(kfold.folds)} folds of all training and validation images, is the better "
                "estimate")
    return Claim("The data are too few for fine distinctions.",
                 f"A {level(first.confidence)} interval on an accuracy is wider than "
                 f"±{first.limit * 100:g} points on {which}, so differences smaller than that are "
                 f"noise there. About {first.needed} images per split would bring it to "
                 f"±{first.limit * 100:g} points; until then, {estimate}.")


# --- the comparisons ---------------------------------------------------------------------------


def best_training_claim(train: TrainOutcome, e: EvaluateOutcome | None) -> Claim | None:
    best = train.best()
    if best is None:
        return None
    said = (f"Of the {len(train.trainings)} trainings, {best.name} reached the highest validation "
            f"accuracy ({fmt(best.best_val_accuracy)})")
    if e is None:
        return Claim("", said + "; whether that is more than noise is weighed by the evaluate stage, "
                     "which has not run yet.")
    tied = [c for c in e.compared("best_training") if not c.distinguishable]
    ahead = [c for c in e.compared("best_training") if c.distinguishable]
    if not tied:
        return Claim("", said + f", ahead of every other training beyond noise (e.g. {ahead[0].model_b}: "
                     f"{evidence(ahead[0])}).") if ahead else Claim("", said + ".")
    closest = max(tied, key=lambda c: c.accuracy_b)
    n = closest.n_a
    if not ahead:
        return Claim("", said + f", but on {n} validation images it cannot be told apart from any of "
                     f"the others (e.g. {closest.model_b} at {fmt(closest.accuracy_b)}: "
                     f"{evidence(closest)}): the data show no best of the six.")
    return Claim("", said + f"; it is ahead of {names(ahead)} beyond noise, but cannot be told apart "
                 f"from {names(tied)} on {n} validation images.")


def names(comparisons: Sequence[Comparison]) -> str:
    return ", ".join(c.model_b for c in comparisons)


def augmentation_claims(train: TrainOutcome, e: EvaluateOutcome | None) -> list[Claim]:
    """Per architecture: did augmentation make a difference the data support?"""
    claims = []
    if e is None:
        return claims
    validation = {c.model_a: c for c in e.compared("augmentation", "validation")}
    test = {c.model_a: c for c in e.compared("augmentation", "test")}
    for name in sorted(set(validation) | set(test)):
        v, t = validation.get(name), test.get(name)
        decisive = judged([c for c in (v, t) if c is not None])
        arch = architecture(next((x.architecture for x in train.trainings if x.name == name), name))
        facts = "; ".join(part for part in (
            f"validation accuracy {fmt(v.accuracy_b)} without and {fmt(v.accuracy_a)} with it "
            f"({evidence(v)})" if v else "",
            f"on the test split {fmt(t.accuracy_b)} and {fmt(t.accuracy_a)} ({evidence(t)})" if t else "",
        ) if part)
        if decisive.distinguishable:
            word = "helped" if decisive.difference > 0 else "hurt"
            claims.append(Claim("", f"Augmentation {word} {arch} beyond noise: {facts}."))
        else:
            claims.append(Claim("", f"For {arch}, augmentation made no difference the data can show: "
                                f"{facts}."))
    return claims


def final_claim(e: EvaluateOutcome) -> Claim | None:
    """The tuned final model against model 3 with augmentation, the model it is tuned from."""
    compared = e.compared("final_vs_model3_aug")
    if not compared:
        return None
    c = judged(compared)
    on = "on the test split" if c.split == "test" else f"on {c.n_a} validation images"
    facts = f"{fmt(c.accuracy_a)} against {fmt(c.accuracy_b)} {on} ({evidence(c)})"
    if c.distinguishable:
        word = "improved on" if c.difference > 0 else "did worse than"
        return Claim("", f"The tuned final model {word} {c.model_b} beyond noise: {facts}.")
    return Claim("", f"The tuned final model cannot be told apart from {c.model_b}: {facts}; the "
                 "tuning's gain, if any, is not shown by these images.")


def paper_claim(e: EvaluateOutcome) -> Claim | None:
    compared = e.compared("paper")
    if not compared:
        return None
    c = compared[0]
    if c.distinguishable:
        side = "above" if c.difference > 0 else "below"
        how = f"is {side} the paper's beyond noise"
    else:
        how = "is not distinguishable from the paper's"
    return Claim("", f"This run's test accuracy, {fmt(c.accuracy_a)} on {c.n_a} images, {how} "
                 f"({fmt(c.accuracy_b)} on {c.n_b:,}; {evidence(c)}, {level(c.confidence)} "
                 "Newcombe interval), though data, split and software differ too.")


def test_claim(e: EvaluateOutcome) -> Claim:
    per_class = "; ".join(f"for {m.label}, precision {fmt(m.precision)} and recall {fmt(m.recall)}"
                          for m in e.per_class)
    return Claim("", f"On the {e.n_images} test images the final model reached accuracy "
                 f"{fmt(e.accuracy)} [{fmt(e.accuracy_interval.low)}, {fmt(e.accuracy_interval.high)}] "
                 f"and ROC AUC {fmt(e.roc_auc)} [{fmt(e.roc_auc_interval.low)}, "
                 f"{fmt(e.roc_auc_interval.high)}]; {per_class}. Its expected calibration error is "
                 f"{fmt(e.expected_calibration_error)}.")


def data_claim(r: Results) -> Claim:
    usable = sum(c.usable for c in r.audit.counts) if r.audit else 0
    classes = " and ".join(r.audit.classes) if r.audit else ""
    held = f", of which {len(r.split.test):,} were held out for the test" if r.split else ""
    return Claim("", f"The study used {usable:,} usable images of {classes}{held}.")


def labels_claim(labels: LabelsOutcome) -> Claim:
    agreeing = sum(1 for s in labels.suspects if s.agreeing_duplicates)
    has = "has" if agreeing == 1 else "have"
    twins = f"; {agreeing} of them {has} a duplicate filed under the other class" if agreeing else ""
    said = (f"Confident learning on the out-of-fold predictions flags {len(labels.suspects):,} of "
            f"{labels.n_checked:,} training and validation labels as suspect{twins} (all in "
            f"{labels.suspects_csv})")
    c = labels.oof_chance
    if c is not None and not c.better_than_chance:
        return Claim("", said + f", but the out-of-fold models are not distinguishable from chance "
                     f"({fmt(c.accuracy)} against {fmt(c.majority_rate)}), so the list is no evidence of "
                     "label errors.")
    return Claim("", said + ".")


# --- the conclusion and the headline -----------------------------------------------------------


def conclusion(r: Results) -> list[Trusted]:
    """The conclusion's paragraphs, most important first: chance, small data, then the rest."""
    return [claim.markdown() for claim in conclusion_claims(r)]


def conclusion_claims(r: Results) -> list[Claim]:
    e = r.evaluate
    claims: list[Claim | None] = []
    # 1. Whether the final model beats guessing, first when it does not.
    if e is not None and e.chance is not None and not e.chance.better_than_chance:
        claims.append(chance_claim(e.chance, e))
    # 2. Splits too small to resolve the differences below.
    small = small_splits(r.split)
    if small:
        claims.append(small_data_claim(small, r.kfold))
    # 3. The data, the six trainings, the tuning, the test split, the paper.
    if r.audit is not None:
        claims.append(data_claim(r))
    if r.train is not None:
        claims.append(best_training_claim(r.train, e))
        claims += augmentation_claims(r.train, e)
    if r.tune is not None:
        claims.append(Claim("", f"Bayesian optimisation over {len(r.tune.trials)} trials chose "
                            f"{hyperparameters(r.tune.best_hyperparameters)} ({r.tune.objective} "
                            f"{fmt(r.tune.best_score)} on validation)."))
    if e is not None:
        claims.append(final_claim(e))
        claims.append(test_claim(e))
        if e.chance is not None and e.chance.better_than_chance:
            claims.append(chance_claim(e.chance, e))
        claims.append(paper_claim(e))
    # 4. Cross-validation, the labels, the mistakes.
    if r.kfold is not None and not small:
        claims.append(Claim("", f"Cross-validated over {len(r.kfold.folds)} folds, the final "
                            f"architecture's accuracy is {fmt(r.kfold.mean_accuracy)} ± "
                            f"{fmt(r.kfold.std_accuracy)}."))
    if r.labels is not None:
        claims.append(labels_claim(r.labels))
    if r.explain is not None:
        claims.append(Claim("", f"Its {r.explain.n_misclassified} mistakes on the test split are shown "
                            "and examined with Grad-CAM in the error analysis."))
    return [c for c in claims if c is not None]


def headline_lines(r: Results) -> list[str]:
    """The console's summary at the end of a study: chance first when the model does not beat it,
    the small-data warning, then the numbers and every comparison with its verdict."""
    e = r.evaluate
    lines = []
    headline = [n for n in headline_numbers(r) if n.first_page]  # chimuf.core.headline
    if e is not None:
        numbers = ", ".join(number_text(n) for n in headline if n.key.startswith("test_")
                            and (n.value is not None or n.key in ALWAYS_SAID)) + f" on {e.n_images} images"
        c = e.chance
        if c is not None and not c.better_than_chance:
            shouted = c.verdict.replace("not ", "NOT ", 1)  # the same words, loud where it matters
            lines.append(f"{shouted}: {numbers}; always answering "
                         f"{c.majority_label} scores {fmt(c.majority_rate)} ({p_text(c.p_value)})")
        else:
            lines.append(numbers + ("" if c is None else f"; {c.verdict} ({c.majority_label} "
                                    f"always: {fmt(c.majority_rate)}, {p_text(c.p_value)})"))
    small = small_splits(r.split)
    if small:
        lines.append("small data: " + ", ".join(f"{p.split} {p.n} images (±{p.half_width * 100:.1f} "
                                                "points)" for p in small)
                     + "; differences below that are noise, the k-fold mean is the better estimate")
    folds = number_of(headline, "kfold_mean_accuracy")
    if r.kfold is not None and folds is not None:
        lines.append(f"{len(r.kfold.folds)}-fold accuracy {fmt(folds.value)} ± {fmt(folds.sd)}")
    if e is not None:
        lines += best_line(e)
        lines += [pair_line(group) for group in paired(e.comparisons) if group[0].topic != "best_training"]
    if r.labels is not None:
        lines.append(f"{len(r.labels.suspects):,} suspect labels of {r.labels.n_checked:,} "
                     f"(out-of-fold, confident learning): {r.labels.suspects_csv}")
    taken = [n for n in headline_numbers(r) if n.key.startswith("take_home.")]
    if r.choose is not None and taken:
        where = f" → {r.export.model_path}" if r.export is not None else ""
        lines.append(f"model to take home, chosen on validation: {r.choose.chosen}; "
                     + ", ".join(number_text(n) for n in taken) + where)
    return lines


ALWAYS_SAID = ("test_accuracy", "test_roc_auc")  # said "n/a" when undefined; the others left out


def number_text(n: Number) -> str:
    """"test accuracy 0.917 [0.899, 0.935]": a headline number as the console says it."""
    interval = f" [{fmt(n.interval.low)}, {fmt(n.interval.high)}]" if n.interval and n.sd is None else ""
    return f"{n.label} {fmt(n.value)}{interval}"


TOPIC = {"augmentation": "with vs without augmentation", "final_vs_model3_aug": "final vs model3_aug",
         "paper": "this run vs the paper", "best_training": "best of the six"}
NAMED_BY_TOPIC = ("final_vs_model3_aug", "paper")  # the topic's words already name both sides


def paired(comparisons: Sequence[Comparison]) -> list[list[Comparison]]:
    """The comparisons grouped by what they compare (topic, model A, model B), in first-seen
    order: one pair measured on validation and on test is one group."""
    groups: dict[tuple[str, str, str], list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault((c.topic, c.model_a, c.model_b), []).append(c)
    return list(groups.values())


def judged(group: Sequence[Comparison]) -> Comparison:
    """The comparison whose verdict counts: the test split's where there is one (paired images
    that no choice was made on), else the first."""
    return next((c for c in group if c.split == "test"), group[0])


def pair_line(group: Sequence[Comparison]) -> str:
    """"with vs without augmentation, model1_aug vs model1: 0.801 vs 0.712 on validation
    (difference …), 0.80 vs 0.70 on test (McNemar p = …): distinguishable"."""
    first = group[0]
    measured = ", ".join(f"{fmt(c.accuracy_a)} vs {fmt(c.accuracy_b)} on {c.split} ({evidence(c)})"
                         for c in group)
    named = "" if first.topic in NAMED_BY_TOPIC else f", {first.model_a} vs {first.model_b}"
    decisive = judged(group)
    side = f" ({decisive.model_a} {'higher' if decisive.difference > 0 else 'lower'})" if (
        decisive.distinguishable) else ""
    return f"{TOPIC.get(first.topic, first.topic)}{named}: {measured}: {verdict(decisive)}{side}"


def best_line(e: EvaluateOutcome) -> list[str]:
    """One line for the best of the six: against the runner-up."""
    compared = e.compared("best_training")
    if not compared:
        return []
    runner_up = max(compared, key=lambda c: c.accuracy_b)
    return [f"best of the six: {runner_up.model_a} {fmt(runner_up.accuracy_a)} vs runner-up "
            f"{runner_up.model_b} {fmt(runner_up.accuracy_b)} on validation, {evidence(runner_up)}: "
            f"{verdict(runner_up)}"]
