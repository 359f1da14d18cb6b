"""The study's plan: every training, trial and fold with its expected epochs and seconds.

    a probe of each architecture the study trains (chimuf.ml.training.probe: models 1-3, the tuned family
    at three points spread over its search space, or with the chosen hyperparameters once the
    search is done, the modern recipe) → seconds per epoch at the split's sizes
    → with the protocol's epoch rules (chimuf.core.plan) → the Plan the study prints at its start
      and whose clock says, after every epoch, how long the rest will take
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace

from chimuf.core.config import StudyConfig
from chimuf.core.hyperparameters import PAPER_BEST, Hyperparameters
from chimuf.core.plan import TRAINING, Plan, Work, training_epochs, trial_epochs, trial_unit
from chimuf.core.results import STAGES, SplitOutcome
from chimuf.ml.architectures.models import build_model, compile_model, resolve_precision
from chimuf.ml.architectures.modern import build_modern, compile_modern
from chimuf.ml.architectures.pretrained import build_pretrained, compile_pretrained
from chimuf.ml.training.pool import local_gpus, machine_cores, worker_slots
from chimuf.ml.training.probe import Pace, mean_pace, probe
from chimuf.tuning.space import search_space

# Where the tuned family is timed: every dimension of the search space at these quantiles, the
# midpoints of its lower, middle and upper thirds. The trials' sizes spread over the whole space
# and an epoch's cost grows faster than linearly with the widths, so their mean is not the middle
# point's (the paper run: timed at the middle, 20 s an epoch; its trials ran 14-34 s).
SPACE_QUANTILES = (1 / 6, 1 / 2, 5 / 6)
POOLED = ("train", "kfold")  # the stages whose units run in a pool (chimuf.ml.training.pool.run_units)


def plan_study(config: StudyConfig, split: SplitOutcome, done: Collection[str] = (),
               off: Collection[str] = ()) -> Plan:
    """Every training, trial and fold of `config` with its expected epochs and seconds per epoch,
    leaving out the stages in `done` (a resumed run's finished ones: neither planned nor probed)
    and those the config switches `off`."""
    finished = list(done)
    done = {*done, *off}
    t, size = config.train, config.data.image_size
    precision = resolve_precision(t.precision)
    n_train, n_val = len(split.train), len(split.validation)
    n_fold_train = round((n_train + n_val) * (1 - 1 / config.kfold.folds))
    n_fold_held = n_train + n_val - n_fold_train

    def paced(architecture: str, hyperparameters: Hyperparameters | None = None) -> Pace:
        model = build_model(architecture, size, hyperparameters, precision)
        compile_model(model, t.learning_rate)
        return probe(model, t.batch_size, config.augment, config.seed)

    # without a search the final model takes the paper's values: the one point to time
    points = [PAPER_BEST] if "tune" in off else space_points(config)
    epochs, fewest, most = training_epochs(t.epochs, t.start_from_epoch, t.patience)
    work: list[Work] = []
    for number in t.models if "train" not in done else ():  # timed with augmentation
        pace = paced(f"model{number}").epoch_s(n_train, n_val)
        work += [Work("train", f"model{number}", epochs, fewest, most, pace, TRAINING),
                 Work("train", f"model{number}_aug", epochs, fewest, most, pace, TRAINING)]
    tuned_left = [stage for stage in ("tune", "final", "kfold") if stage not in done]
    paces = [paced("tuned", point) for point in points] if tuned_left else []
    tuned = mean_pace(paces) if paces else None
    u = config.tune
    for index in range(u.max_trials) if tuned and "tune" not in done else ():
        e, low, high = trial_epochs(index, u.epochs, t.start_from_epoch, t.patience,
                                    u.prune_after if u.prune else None)
        work.append(Work("tune", trial_unit(index), e, low, high, tuned.epoch_s(n_train, n_val)))
    if tuned and "final" not in done:
        work.append(Work("final", "final", epochs, fewest, most, tuned.epoch_s(n_train, n_val), TRAINING))
    k = config.kfold
    if k.early_stopping:
        fold = (epochs, fewest, k.epochs or t.epochs)
    else:
        kept = k.epochs or max(1, round(epochs - t.patience))  # the final model's kept epoch
        fold = (float(kept), kept if k.epochs else 1, kept if k.epochs else t.epochs)
    for number in range(1, k.folds + 1) if tuned and "kfold" not in done else ():
        work.append(Work("kfold", f"fold{number}", *fold, tuned.epoch_s(n_fold_train, n_fold_held),
                         TRAINING if k.early_stopping else ""))
    if config.modern.enabled and "modern" not in done:
        m = config.modern
        model = build_modern(m.train_side(size), m, precision)  # it trains (and validates) at that side
        compile_modern(model, m, math.ceil(n_train / m.batch_size))
        pace = probe(model, m.batch_size, config.augment if m.augment else None, config.seed)
        work.append(Work("modern", "modern", m.epochs, m.epochs, m.epochs, pace.epoch_s(n_train, n_val)))
    if config.pretrained.backbone and "pretrained" not in done:
        work += pretrained_work(config, n_train, n_val)
    searching = tuned and "tune" not in off
    notes = [f"the tuned family is timed at three points of its search space, from "
             f"({hyperparameters_text(points[0])}) to ({hyperparameters_text(points[-1])}): "
             f"{' / '.join(f'{p.epoch_s(n_train, n_val):.1f}' for p in paces)} s an epoch, the trials "
             "planned at their mean; the final model and the folds are re-timed with the chosen "
             "hyperparameters once the search is done"] if searching else []
    if finished:
        notes.append(f"finished before, not planned again: {', '.join(s for s in STAGES if s in finished)}")
    if off:
        notes.append(f"switched off by the config: {', '.join(s for s in STAGES if s in off)}")
    fixed = {stage: seconds for stage, seconds in fixed_seconds(config, split).items() if stage not in done}
    return Plan(stages=list(STAGES), work=work, fixed=fixed, notes=notes, slots=pool_widths(config, work))


def pool_widths(config: StudyConfig, work: list[Work]) -> dict[str, int]:
    """How many units of each pooled stage (the trainings, the folds) will run at once: the pool's
    own rule (chimuf.ml.training.pool) on this machine; the pool says it again as it starts."""
    t = config.train
    counts = {stage: sum(w.stage == stage for w in work) for stage in POOLED}
    if not any(counts.values()):
        return {}
    gpus, cores = local_gpus(), machine_cores()
    return {stage: len(worker_slots(t.workers, t.threads_per_unit, cores, gpus, count))
            for stage, count in counts.items() if count}


def pretrained_work(config: StudyConfig, n_train: int, n_val: int) -> list[Work]:
    """The pretrained baseline's two phases, timed on its backbone with random weights (the same
    arithmetic as the real ones; no download). Both phases are timed frozen: fine-tuning its last
    layers costs somewhat more, so this part of the plan errs short."""
    p = config.pretrained
    model = build_pretrained(config.data.image_size, p, None)
    compile_pretrained(model, p.learning_rate)
    epoch_s = probe(model, config.train.batch_size, config.augment, config.seed).epoch_s(n_train, n_val)
    return [Work("pretrained", name, epochs, epochs, epochs, epoch_s)
            for name, epochs in (("pretrained_head", p.epochs), ("pretrained", p.fine_tune_epochs)) if epochs]


def space_points(config: StudyConfig) -> list[Hyperparameters]:
    """The search space at SPACE_QUANTILES: every dimension low, middle, high together."""
    dimensions = search_space(config.tune)
    return [Hyperparameters.of({d.name: d.values[min(len(d.values) - 1, int(q * len(d.values)))]
                                for d in dimensions}) for q in SPACE_QUANTILES]


def with_chosen(plan: Plan, config: StudyConfig, split: SplitOutcome, best: object) -> Plan:
    """The plan with the final model and the folds timed with the hyperparameters the search chose."""
    t = config.train
    model = build_model("tuned", config.data.image_size, best, resolve_precision(t.precision))
    compile_model(model, t.learning_rate)
    pace = probe(model, t.batch_size, config.augment, config.seed)
    n_train, n_val = len(split.train), len(split.validation)
    n_fold_train = round((n_train + n_val) * (1 - 1 / config.kfold.folds))
    fold_s = pace.epoch_s(n_fold_train, n_train + n_val - n_fold_train)
    work = [replace(w, epoch_s=pace.epoch_s(n_train, n_val)) if w.stage == "final" else
            replace(w, epoch_s=fold_s) if w.stage == "kfold" else w for w in plan.work]
    return replace(plan, work=work)


def fixed_seconds(config: StudyConfig, split: SplitOutcome) -> dict[str, float]:
    """The stages that train nothing, from what they took in the measured paper run (all photos,
    128 px, 2 cores), scaled by the images and pixels they handle."""
    images = len(split.train) + len(split.validation) + len(split.test)
    scale = images / 4733 * (config.data.image_size / 128) ** 2
    # the audit has run when the plan is made; what is left of it is the stages below
    measured = {"cache": 5.0, "evaluate": 10.0, "labels": 10.0, "explain": 30.0, "beyond": 30.0,
                "choose": 10.0, "export": 10.0, "report": 20.0}
    return {stage: 2.0 + seconds * scale for stage, seconds in measured.items()}


def hyperparameters_text(values: object) -> str:
    return ", ".join(f"{k} {v}" for k, v in dict(values).items())
