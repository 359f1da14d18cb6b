"""Every stage of the study, declared once: its name, its outcome, what it depends on, its work.

    audit → split → cache → train → tune → final → evaluate → kfold → labels → explain
      → modern → pretrained → own → beyond → choose → export → report

A spec's `inputs(config, results, setting)` names everything the stage depends on: slices of the
config and earlier outcomes (wrapped in `Upstream`, fingerprinted by their digest). The engine
(chimuf.core.engine) fingerprints exactly that, and `run` is handed exactly that (as `Inputs`), so
what a stage is fingerprinted on and what it reads cannot drift apart: a value a stage reads is a
value it names. Adding a stage or an input is one edit here. The `Setting` is the rest a stage may
use: where things are and where to report, and limits on the files it opens, none of which changes
a number (a setting that changes none is marked so in chimuf.core.config and left out of the
fingerprint).

chimuf.study walks SPECS in order, as Keras Tuner's engine walks an oracle; a tuning worker asks
the SPLIT and CACHE specs for the inputs the chief's study fingerprinted them with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from chimuf.core.config import ModelFilesConfig, StudyConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext, Upstream
from chimuf.core.hyperparameters import PAPER_BEST, Hyperparameters
from chimuf.core.results import (
    ANALYSIS_STAGES,
    AuditOutcome,
    BeyondOutcome,
    CacheOutcome,
    ChooseOutcome,
    EvaluateOutcome,
    ExplainOutcome,
    ExportOutcome,
    KFoldOutcome,
    LabelsOutcome,
    OwnOutcome,
    ReportOutcome,
    Results,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
    TuneOutcome,
    digest,
)
from chimuf.data import audit, cache, split
from chimuf.data.sources import Sources
from chimuf.ml.architectures import builders, pretrained
from chimuf.ml.architectures.builders import Builder
from chimuf.ml.training.fit import UNMONITORED, Monitoring
from chimuf.stages import beyond, choose, evaluate, explain, export, kfold, labels, train, tune

if TYPE_CHECKING:
    from chimuf.tuning.protocol import Address

T = TypeVar("T")
Inputs = SimpleNamespace  # a stage's inputs by name, upstream outcomes whole


@dataclass(frozen=True)
class Setting:
    """What a stage may use besides its inputs: where the data and the image cache are, where to
    report (TensorBoard, callbacks, the study's clock), the tuning chief's address and the limits on
    the model files it opens. None of it changes a number, so none of it is fingerprinted."""

    data_dir: Path
    cache_dir: Path
    model_files: ModelFilesConfig
    monitor: Monitoring = UNMONITORED
    tune_chief: Address | None = None
    labels_csv: Path | None = None  # the data comes from this labels CSV (data_dir is its folder)
    test_dir: Path | None = None  # a given test folder
    val_dir: Path | None = None  # a given validation folder
    builders: Mapping[str, Builder] = field(default_factory=dict)  # the user's own, by candidate name

    def sources(self) -> Sources:
        return Sources(self.data_dir, self.labels_csv, self.test_dir, self.val_dir)


def always_on(config: StudyConfig) -> str:
    return ""


def always_valid(outcome: Any) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec(Generic[T]):
    """One stage: what it is called, what it hands on, what it depends on and what it does."""

    name: str
    outcome: type[T]
    inputs: Callable[[StudyConfig, Results, Setting], dict[str, Any]]
    run: Callable[[StageContext, Setting, Inputs], T]
    trains: bool = False  # trains models: the plan times it, the clock counts it
    off: Callable[[StudyConfig], str] = always_on  # why the config switches it off; "" = on
    # why it is off in this study for what the config cannot hold (the API's own builders); "" = on
    off_here: Callable[[Setting], str] = lambda setting: ""
    still_valid: Callable[[T], bool] = always_valid  # a saved outcome checked against the world
    announce: Callable[[T, Console], None] | None = None  # said after it runs or is reused


# --- the data: files → split lists → decoded images ----------------------------------------------


def audit_inputs(config: StudyConfig, results: Results, setting: Setting) -> dict[str, Any]:
    sample = config.data.max_per_class
    return {"audit": config.audit, "max_per_class": sample, "positive": config.data.positive,
            "listing": audit.listing_fingerprint(setting.data_dir, setting.sources()),
            **({"seed": config.seed} if sample else {})}  # the seed draws the sample, nothing else


def run_audit(ctx: StageContext, setting: Setting, got: Inputs) -> AuditOutcome:
    outcome = audit.audit_sources(setting.sources(), got.audit, ctx.console, max_per_class=got.max_per_class,
                                  seed=getattr(got, "seed", 0), positive=got.positive)
    split.check_two_classes(outcome)  # a study is binary: say so now, not at the split
    return outcome


def split_inputs(config: StudyConfig, results: Results, setting: Setting | None = None) -> dict[str, Any]:
    return {"split": config.split, "seed": config.seed, "data": Upstream(results.audit),
            "drop_test_duplicates": config.data.drop_test_duplicates}


def run_split(ctx: StageContext, setting: Setting, got: Inputs) -> SplitOutcome:
    return split.split_dataset(got.data, got.split, got.seed, drop_test_duplicates=got.drop_test_duplicates)


def warn_small_splits(outcome: SplitOutcome, console: Console) -> None:
    for warning in split.small_split_warnings(outcome):
        console.warn(warning)


def cache_inputs(config: StudyConfig, results: Results, setting: Setting | None = None) -> dict[str, Any]:
    return {"image_size": config.data.image_size, "data": Upstream(results.audit)}


def run_cache(ctx: StageContext, setting: Setting, got: Inputs) -> CacheOutcome:
    return cache.build_cache(got.data, setting.data_dir, got.image_size, setting.cache_dir, ctx.console)


def cache_file_exists(outcome: CacheOutcome) -> bool:
    return Path(outcome.images_path).is_file()


# --- the paper's trainings (sections 4-6, 8) ----------------------------------------------------


def training_inputs(config: StudyConfig, results: Results) -> dict[str, Any]:
    """What every training depends on: the images, the split, the seed and the training rules."""
    return {"cache": Upstream(results.cache), "split": Upstream(results.split), "seed": config.seed,
            "train": config.train, "augment": config.augment}


def best_hyperparameters(results: Results) -> Hyperparameters:
    """The search's choice; without a search (tune.enabled = false) the paper's own best values
    (section 6): the architecture the paper ended with, not a default nobody chose."""
    return results.tune.best_hyperparameters if results.tune is not None else PAPER_BEST


def switch(on: bool, key: str) -> str:
    return "" if on else f"{key} = false"


def run_train(ctx: StageContext, setting: Setting, got: Inputs) -> TrainOutcome:
    return train.run_trainings(ctx, got.cache, got.split, got.train, got.augment, got.seed, setting.monitor)


def run_tune(ctx: StageContext, setting: Setting, got: Inputs) -> TuneOutcome:
    return tune.run_tuning(ctx, got.cache, got.split, got.tune, got.train, got.augment, got.seed,
                           chief=setting.tune_chief, monitor=setting.monitor)


def run_final(ctx: StageContext, setting: Setting, got: Inputs) -> TrainingOutcome:
    return train.train_final(ctx, got.cache, got.split, got.hyperparameters, got.train, got.augment,
                             got.seed, setting.monitor)


def run_evaluate(ctx: StageContext, setting: Setting, got: Inputs) -> EvaluateOutcome:
    trainings = got.train_outcome or TrainOutcome([], [])  # train.enabled = false: nothing to pair with
    return evaluate.evaluate_final(ctx, got.cache, got.split, got.audit, got.final, trainings,
                                   got.evaluate, got.train, got.seed, setting.model_files)


def run_kfold(ctx: StageContext, setting: Setting, got: Inputs) -> KFoldOutcome:
    return kfold.run_kfold(ctx, got.cache, got.split, got.audit, got.hyperparameters, got.kfold, got.train,
                           got.augment, got.seed, setting.monitor, final_epoch=got.final_epoch,
                           confidence=got.confidence)


def run_labels(ctx: StageContext, setting: Setting, got: Inputs) -> LabelsOutcome:
    return labels.check_labels(ctx, got.cache, got.split, got.audit, got.kfold, got.labels, got.confidence)


def run_explain(ctx: StageContext, setting: Setting, got: Inputs) -> ExplainOutcome:
    return explain.explain_errors(ctx, got.cache, got.split, got.final, got.evaluate, got.explain, got.seed,
                                  setting.model_files)


# --- beyond the paper ---------------------------------------------------------------------------


def modern_inputs(config: StudyConfig, results: Results, setting: Setting | None = None) -> dict[str, Any]:
    """A training's inputs and the recipe; the audit too where it trains on smaller images (their cache)."""
    smaller = config.modern.train_side(config.data.image_size) != config.data.image_size
    return {**training_inputs(config, results), "modern": config.modern,
            **(upstream(results, "audit") if smaller else {})}


def run_modern(ctx: StageContext, setting: Setting, got: Inputs) -> TrainingOutcome:
    side = got.modern.train_side(got.cache.image_size)
    smaller = (cache.build_cache(got.audit, setting.data_dir, side, setting.cache_dir, ctx.console)
               if side != got.cache.image_size else None)
    return train.train_modern(ctx, got.cache, got.split, got.modern, got.train, got.augment, got.seed,
                              setting.monitor, smaller)


def pretrained_off(config: StudyConfig) -> str:
    """Off without a backbone; with `skip_offline`, off when its weights are not at hand."""
    cfg = config.pretrained
    if not cfg.backbone:
        return "pretrained.backbone is ''"
    if cfg.skip_offline and not pretrained.weights_at_hand(cfg):
        return (f"no {cfg.backbone} weights at hand (offline: neither pretrained.weights nor Keras' cache "
                "has them); pass --weights PATH to add the pretrained candidate")
    return ""


def run_pretrained(ctx: StageContext, setting: Setting, got: Inputs) -> TrainingOutcome:
    return train.train_pretrained(ctx, got.cache, got.split, got.pretrained, got.train, got.augment,
                                  got.seed, setting.monitor)


def own_inputs(config: StudyConfig, results: Results, setting: Setting) -> dict[str, Any]:
    """The trainings' inputs and each builder by name and source (ml.architectures.builders.fingerprint)."""
    return {**training_inputs(config, results),
            "builders": {name: builders.fingerprint(fn) for name, fn in setting.builders.items()}}


def run_own(ctx: StageContext, setting: Setting, got: Inputs) -> OwnOutcome:
    return train.train_own(ctx, got.cache, got.split, setting.builders, got.train, got.augment, got.seed,
                           setting.monitor)


def run_beyond(ctx: StageContext, setting: Setting, got: Inputs) -> BeyondOutcome:
    return beyond.compare_beyond(ctx, got.cache, got.split, got.final, got.evaluate, got.kfold, got.modern,
                                 got.evaluate_cfg, got.seed, got.pretrained, setting.model_files, got.own)


def run_choose(ctx: StageContext, setting: Setting, got: Inputs) -> ChooseOutcome:
    return choose.choose_model(ctx, got.cache, got.split, got.beyond, got.kfold, setting.model_files,
                               got.gradcam_layer)


def run_export(ctx: StageContext, setting: Setting, got: Inputs) -> ExportOutcome:
    return export.export_final(ctx, got.cache, got.split, got.final, got.evaluate, got.export,
                               setting.model_files, got.choose)


# --- the report ---------------------------------------------------------------------------------


def results_without_run(results: Results) -> list[object]:
    """The stage outcomes alone: what the report's content depends on."""
    return [getattr(results, name) for name in ANALYSIS_STAGES if name != "cache"]


def own_templates_digest(config: StudyConfig) -> str:
    """SHA-256 of the user's templates (report.templates: names and bytes), so editing one renders
    the report again; "" when none are set or the folder is missing (the report says so)."""
    folder = Path(config.report.templates).expanduser() if config.report.templates else None
    if folder is None or not folder.is_dir():
        return ""
    found = hashlib.sha256()
    for path in sorted(folder.rglob("*.j2")):
        found.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return found.hexdigest()


def run_report(ctx: StageContext, setting: Setting, got: Inputs) -> ReportOutcome:
    from chimuf import report

    return report.build_report(ctx.run_dir, got.report, ctx.console)


# --- the list ----------------------------------------------------------------------------------


def upstream(results: Results, *names: str) -> dict[str, Upstream]:
    return {name: Upstream(getattr(results, name)) for name in names}


AUDIT = StageSpec("audit", AuditOutcome, audit_inputs, run_audit)
SPLIT = StageSpec("split", SplitOutcome, split_inputs, run_split, announce=warn_small_splits)
CACHE = StageSpec("cache", CacheOutcome, cache_inputs, run_cache, still_valid=cache_file_exists)

SPECS: tuple[StageSpec[Any], ...] = (
    AUDIT,
    SPLIT,
    CACHE,
    StageSpec("train", TrainOutcome, lambda c, r, s: training_inputs(c, r), run_train, trains=True,
              off=lambda c: switch(c.train.enabled, "train.enabled")),
    StageSpec("tune", TuneOutcome, lambda c, r, s: {**training_inputs(c, r), "tune": c.tune}, run_tune,
              trains=True, off=lambda c: switch(c.tune.enabled, "tune.enabled")),
    StageSpec("final", TrainingOutcome,
              lambda c, r, s: {**training_inputs(c, r), "hyperparameters": best_hyperparameters(r)},
              run_final, trains=True),
    StageSpec("evaluate", EvaluateOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "audit", "final"),
                               "train_outcome": Upstream(r.train), "evaluate": c.evaluate,
                               "train": c.train, "seed": c.seed},
              run_evaluate),
    StageSpec("kfold", KFoldOutcome,
              lambda c, r, s: {**training_inputs(c, r), "hyperparameters": best_hyperparameters(r),
                               "kfold": c.kfold, "audit": Upstream(r.audit),
                               "final_epoch": r.final.best_epoch, "confidence": c.evaluate.confidence},
              run_kfold, trains=True, off=lambda c: switch(c.kfold.enabled, "kfold.enabled")),
    StageSpec("labels", LabelsOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "audit", "kfold"), "labels": c.labels,
                               "confidence": c.evaluate.confidence},
              run_labels, off=lambda c: switch(c.kfold.enabled, "kfold.enabled")),
    StageSpec("explain", ExplainOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "final", "evaluate"), "explain": c.explain,
                               "seed": c.seed},
              run_explain),
    StageSpec("modern", TrainingOutcome, modern_inputs,
              run_modern, trains=True, off=lambda c: "" if c.modern.enabled else "modern.enabled = false"),
    StageSpec("pretrained", TrainingOutcome,
              lambda c, r, s: {**training_inputs(c, r), "pretrained": c.pretrained}, run_pretrained,
              trains=True, off=pretrained_off),
    StageSpec("own", OwnOutcome, own_inputs, run_own, trains=True,
              off_here=lambda s: "" if s.builders else "no own architecture (candidates.builders)"),
    StageSpec("beyond", BeyondOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "final", "evaluate", "kfold", "modern",
                                          "pretrained", "own"),
                               "evaluate_cfg": c.evaluate, "seed": c.seed},
              run_beyond),
    StageSpec("choose", ChooseOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "beyond", "kfold"),
                               "gradcam_layer": c.candidates.gradcam_layer},
              run_choose),
    StageSpec("export", ExportOutcome,
              lambda c, r, s: {**upstream(r, "cache", "split", "final", "evaluate", "choose"),
                               "export": c.export},
              run_export),
    StageSpec("report", ReportOutcome,
              lambda c, r, s: {"results": digest(results_without_run(r)), "report": c.report,
                               "own_templates": own_templates_digest(c)}, run_report),
)

BY_NAME: dict[str, StageSpec[Any]] = {spec.name: spec for spec in SPECS}
TRAINING_STAGES: tuple[str, ...] = tuple(spec.name for spec in SPECS if spec.trains)
