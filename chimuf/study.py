"""The whole study, stage by stage, as the paper ran it.

    audit → split → cache → train ×6 → tune → final → evaluate → kfold → labels → explain
      → modern → beyond → export → report

Each stage is a module named for it; this file only calls them in order and says what each one
depends on, so the engine can skip a stage whose inputs are unchanged and resume the rest.
After every stage the run's results.json is rewritten, so even a partial run has a report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf import report
from chimuf.core import environment
from chimuf.core.config import StudyConfig, as_dict, differences
from chimuf.core.console import Console
from chimuf.core.engine import Run
from chimuf.core.errors import ConfigError, DataError
from chimuf.core.files import atomic_write_json, now_iso
from chimuf.core.plan import StudyClock
from chimuf.core.results import (
    ANALYSIS_STAGES,
    SCHEMA_VERSION,
    STAGES,
    AuditOutcome,
    BeyondOutcome,
    CacheOutcome,
    ConfigDifference,
    EnvironmentInfo,
    EvaluateOutcome,
    ExplainOutcome,
    ExportOutcome,
    KFoldOutcome,
    LabelsOutcome,
    ReportOutcome,
    Results,
    RunInfo,
    SplitOutcome,
    TrainingOutcome,
    TrainOutcome,
    TuneOutcome,
    digest,
)
from chimuf.data import audit, cache, split
from chimuf.ml import machine
from chimuf.ml.fit import Monitoring
from chimuf.ml.models import Blueprint, blueprint, parameter_count, precision_choice
from chimuf.report.claims import headline_lines
from chimuf.report.project import publish
from chimuf.stages import beyond, evaluate, explain, export, kfold, labels, plan, train, tune
from chimuf.tools import tracking
from chimuf.version import __version__

if TYPE_CHECKING:
    from chimuf.tuning.protocol import Address

TRAINING_STAGES = ("train", "tune", "final", "kfold", "modern")  # the stages the plan times
PACKAGES = ("tensorflow", "keras", "keras-tuner", "tf-keras-vis", "numpy", "scikit-learn",
            "cleanlab", "pillow", "matplotlib", "pypandoc-binary", "typst")


@dataclass
class StudyPaths:
    data_dir: Path
    run_dir: Path
    cache_dir: Path


def run_study(config: StudyConfig, paths: StudyPaths, console: Console, stop_after: str = "",
              tune_chief: Address | None = None, callbacks: Sequence[Any] = (),
              plan_only: bool = False, project: Path | None = None) -> Results:
    """Run (or resume) every stage of the study in `paths.run_dir`; return its results.

    With `tune_chief`, the search serves its trials to workers at that address (chimuf.tuning).
    `callbacks` are extra Keras callbacks for every training (the six, the final model, the folds).
    With `tracking.mlflow_uri`, what the run found is logged to MLflow once the stages are done.
    With `plan_only`, the study stops after its split and the printed plan of the rest.
    With `project`, the report's Quarto project is also published there (chimuf.report.project).
    """
    check_model_sizes(config)
    if config.tracking.mlflow_uri:
        tracking.check_mlflow(config.tracking)
    results = run_stages(config, paths, console, stop_after, tune_chief, callbacks, plan_only, project)
    if config.tracking.mlflow_uri and not plan_only:
        tracking.log_run(results, paths.run_dir, config.tracking, console)
    return results


def run_stages(config: StudyConfig, paths: StudyPaths, console: Console, stop_after: str,
               tune_chief: Address | None, callbacks: Sequence[Any], plan_only: bool = False,
               project: Path | None = None) -> Results:
    run = Run(paths.run_dir, console)
    console.log_to(paths.run_dir / "study.log")
    seed = config.seed
    tensorboard = paths.run_dir / "tensorboard" if config.tracking.tensorboard else None
    machine.enable_determinism(config.train.deterministic)
    onednn = machine.start_onednn_probe(paths.cache_dir)  # answers in the background
    with run.activate({"profile": config.profile, "seed": seed, "data_dir": str(paths.data_dir)}):
        results = Results(SCHEMA_VERSION, run_info(run, config, paths, ""))
        env = environment_info(onednn, config.train.precision)

        def save(stage: str, outcome: object) -> bool:
            """Record `outcome` in results.json; True when the study should stop here (the run
            is then recorded as `stopped`, resumable)."""
            setattr(results, stage, outcome)
            stopping = stage == stop_after
            if stopping:
                run.stop(stage)
            write_results(run, results, config, paths, env=env)
            return stopping

        # 1. Which files are usable, and what is wrong with the others.
        results.audit = run.stage(
            "audit", audit_inputs(config, paths.data_dir), AuditOutcome,
            lambda ctx: audit.audit_folder(paths.data_dir, config.audit, console,
                                           max_per_class=config.data.max_per_class, seed=seed),
        )
        if save("audit", results.audit):
            return results

        # 2. Train / validation / test lists, near-duplicate groups kept whole (paper 3.1).
        results.split = run.stage(
            "split", split_inputs(config, results.audit), SplitOutcome,
            lambda ctx: split.split_dataset(results.audit, config.split, seed),
        )
        for warning in split.small_split_warnings(results.split):
            console.warn(warning)
        if save("split", results.split):
            return results

        # The plan of the rest, timed by a short probe of each architecture here; its clock says
        # the study's time left after every epoch. A study with nothing left to train has none.
        study_plan = None
        if plan_only or any(not run.outcome_path(name).exists() for name in TRAINING_STAGES):
            after_split = STAGES[STAGES.index("split") + 1:]
            finished = [name for name in after_split if run.outcome_path(name).exists()]
            study_plan = plan.plan_study(config, results.split, done=finished)
            for line in study_plan.lines():
                console.info(line)
            if plan_only:
                run.stop("split")
                write_results(run, results, config, paths, env=env)
                return results
        monitor = Monitoring(tensorboard, tuple(callbacks), study_plan and StudyClock(study_plan))

        # 3. Decode every usable image once, at the configured size.
        results.cache = run.stage(
            "cache", cache_inputs(config, results.audit), CacheOutcome,
            lambda ctx: cache.build_cache(results.audit, paths.data_dir, config.data.image_size,
                                          paths.cache_dir, console),
            still_valid=lambda outcome: Path(outcome.images_path).is_file(),
        )
        if save("cache", results.cache):
            return results
        common = {"cache": results.cache.digest, "split": results.split.digest, "seed": seed,
                  "train": config.train, "augment": config.augment}

        # 4. Models 1-3, each without and with augmentation (paper 4-5).
        results.train = run.stage(
            "train", common, TrainOutcome,
            lambda ctx: train.run_trainings(ctx, results.cache, results.split, config.train,
                                            config.augment, seed, monitor),
        )
        if save("train", results.train):
            return results

        # 5. Bayesian search over the model-3 family (paper 6).
        results.tune = run.stage(
            "tune", {**common, "tune": tune.tune_inputs(config.tune)}, TuneOutcome,
            lambda ctx: tune.run_tuning(ctx, results.cache, results.split, config.tune,
                                        config.train, config.augment, seed, chief=tune_chief,
                                        monitor=monitor),
        )
        if save("tune", results.tune):
            return results
        best = results.tune.best_hyperparameters
        if study_plan is not None and not run.outcome_path("kfold").exists():
            monitor.clock.plan = plan.with_chosen(study_plan, config, results.split, best)

        # 6. The final model: best hyperparameters, trained with augmentation (paper 6).
        results.final = run.stage(
            "final", {**common, "hyperparameters": best}, TrainingOutcome,
            lambda ctx: train.train_final(ctx, results.cache, results.split, best, config.train,
                                          config.augment, seed, monitor),
        )
        if save("final", results.final):
            return results

        # 7. Test-split metrics with intervals, ROC, calibration, McNemar (paper 7).
        results.evaluate = run.stage(
            "evaluate",
            {"final": digest(results.final), "train": digest(results.train),
             "split": results.split.digest, "audit": results.audit.digest,
             "evaluate": config.evaluate, "seed": seed},
            EvaluateOutcome,
            lambda ctx: evaluate.evaluate_final(ctx, results.cache, results.split, results.audit,
                                                results.final, results.train, config.evaluate,
                                                config.train, seed, config.model_files),
        )
        if save("evaluate", results.evaluate):
            return results

        # 8. n-fold cross-validation of the final architecture (paper 8).
        results.kfold = run.stage(
            "kfold", {**common, "hyperparameters": best, "kfold": config.kfold,
                      "audit": results.audit.digest, "final_epoch": results.final.best_epoch},
            KFoldOutcome,
            lambda ctx: kfold.run_kfold(ctx, results.cache, results.split, results.audit, best,
                                        config.kfold, config.train, config.augment, seed, monitor,
                                        final_epoch=results.final.best_epoch),
        )
        if save("kfold", results.kfold):
            return results

        # 9. Suspect labels from the out-of-fold predictions; the duplicate groups as pictures.
        results.labels = run.stage(
            "labels",
            {"kfold": digest(results.kfold), "split": results.split.digest,
             "audit": results.audit.digest, "cache": results.cache.digest, "labels": config.labels,
             "confidence": config.evaluate.confidence},
            LabelsOutcome,
            lambda ctx: labels.check_labels(ctx, results.cache, results.split, results.audit,
                                            results.kfold, config.labels, config.evaluate.confidence),
        )
        if save("labels", results.labels):
            return results

        # 10. Kernels, activations and Grad-CAM on the mistakes (paper 9).
        results.explain = run.stage(
            "explain",
            {"final": digest(results.final), "evaluate": digest(results.evaluate),
             "explain": config.explain, "seed": seed},
            ExplainOutcome,
            lambda ctx: explain.explain_errors(ctx, results.cache, results.split, results.final,
                                               results.evaluate, config.explain, seed,
                                               config.model_files),
        )
        if save("explain", results.explain):
            return results

        # 11. Beyond the paper: a modern from-scratch recipe, then it, the fold ensemble and
        #     test-time flips beside the final model on the same test split.
        if config.modern.enabled:
            results.modern = run.stage(
                "modern", {**common, "modern": config.modern}, TrainingOutcome,
                lambda ctx: train.train_modern(ctx, results.cache, results.split, config.modern,
                                               config.train, config.augment, seed, monitor),
            )
        else:
            run.switched_off("modern", "modern.enabled = false")
        if save("modern", results.modern):
            return results
        if config.pretrained.backbone:
            results.pretrained = run.stage(
                "pretrained", {**common, "pretrained": config.pretrained}, TrainingOutcome,
                lambda ctx: train.train_pretrained(ctx, results.cache, results.split, config.pretrained,
                                                   config.train, config.augment, seed, monitor),
            )
        else:
            run.switched_off("pretrained", "pretrained.backbone is ''")
        if save("pretrained", results.pretrained):
            return results
        results.beyond = run.stage(
            "beyond",
            {"final": digest(results.final), "evaluate": digest(results.evaluate),
             "kfold": digest(results.kfold), "modern": digest(results.modern),
             "pretrained": digest(results.pretrained),
             "evaluate_cfg": config.evaluate, "seed": seed},
            BeyondOutcome,
            lambda ctx: beyond.compare_beyond(ctx, results.cache, results.split, results.final,
                                              results.evaluate, results.kfold, results.modern,
                                              config.evaluate, seed, results.pretrained),
        )
        if save("beyond", results.beyond):
            return results

        # 12. The model to take home: the final model with the threshold chosen on validation
        #     data, and its TFLite export, each checked against the Keras model.
        results.export = run.stage(
            "export",
            {"final": digest(results.final), "evaluate": digest(results.evaluate),
             "split": results.split.digest, "export": config.export},
            ExportOutcome,
            lambda ctx: export.export_final(ctx, results.cache, results.split, results.final,
                                            results.evaluate, config.export),
        )
        if save("export", results.export):
            return results

        # 13. The report, from results.json and the figures alone. Every analysis stage is done,
        #     so results.json (and the report) say the study finished; run.json says so only
        #     once the report is rendered too.
        # oneDNN's answer has come by now, or comes
        env = environment_info(onednn, config.train.precision, wait_s=120)
        write_results(run, results, config, paths, status="finished", env=env)
        rendered = run.stage(
            "report",
            {"results": digest(results_without_run(results)), "report": config.report},
            ReportOutcome,
            lambda ctx: report.build_report(paths.run_dir, config.report, console),
        )
        # even when the report was reused: this is the latest study
        published = publish(paths.run_dir, project) if project is not None else None
        run.finish()
        write_results(run, results, config, paths, env=env)
        print_headline(console, paths.run_dir, results, rendered)
        if published is not None:  # after the verdict, which comes first
            console.info(f"Quarto project {published} holds run {run.run_id}")
        return results


def check_model_sizes(config: StudyConfig) -> None:
    """Refuse, before any work, a study whose models would exceed `model_files.max_params`: their
    saved files would be refused when the later stages open them (chimuf.ml.modelfile)."""
    tune = config.tune
    largest_tuned = Blueprint(tuple(int(tune.range_of(f"conv{i}_filters")[1]) for i in (1, 2, 3)),
                              int(tune.dense_units[1]), None, None)
    plans = [(f"model {n}", blueprint(f"model{n}", None)) for n in config.train.models]
    plans.append(("the tuner's largest", largest_tuned))
    size = config.data.image_size
    name, count = max(((name, parameter_count(plan, size)) for name, plan in plans), key=lambda p: p[1])
    if count > config.model_files.max_params:
        raise ConfigError(
            f"at {size} px, {name} has {count:,} parameters, more than `model_files.max_params` = "
            f"{config.model_files.max_params:,}, so its saved model would be refused when it is "
            f"evaluated; raise model_files.max_params to at least {count:,}, or lower data.image_size "
            "or the tuning ranges"
        )


# --- what each data stage depends on: the engine reruns it when one of these changes -----------
# (a tuning worker asks the engine for the chief's finished split and cache by the same inputs)


def audit_inputs(config: StudyConfig, data_dir: Path) -> dict[str, Any]:
    return {"audit": config.audit, "max_per_class": config.data.max_per_class, "seed": config.seed,
            "listing": audit.listing_fingerprint(data_dir)}


def split_inputs(config: StudyConfig, audit: AuditOutcome) -> dict[str, Any]:
    return {"split": config.split, "seed": config.seed, "data": audit.digest}


def cache_inputs(config: StudyConfig, audit: AuditOutcome) -> dict[str, Any]:
    return {"image_size": config.data.image_size, "data": audit.digest}


def results_without_run(results: Results) -> list[object]:
    """The stage outcomes alone: what the report's content depends on."""
    return [getattr(results, name) for name in ANALYSIS_STAGES if name != "cache"]


def write_results(run: Run, results: Results, config: StudyConfig, paths: StudyPaths,
                  status: str = "", env: EnvironmentInfo | None = None) -> None:
    results.run = run_info(run, config, paths, results.audit.digest if results.audit else "", env)
    results.run.status = status or results.run.status
    atomic_write_json(paths.run_dir / "results.json", results)


def run_info(run: Run, config: StudyConfig, paths: StudyPaths, data_digest: str,
             env: EnvironmentInfo | None = None) -> RunInfo:
    return RunInfo(
        run_id=run.run_id,
        status=run.state.get("status", "running"),
        profile=config.profile,
        seed=config.seed,
        config=as_dict(config),
        config_differences=[ConfigDifference(*d) for d in differences(config) if d[0] != "profile"],
        data_dir=str(paths.data_dir),
        data_digest=data_digest,
        packages=package_versions(),
        hardware=hardware_summary(),
        started_at=run.state.get("started_at", now_iso()),
        updated_at=now_iso(),
        stages=list(run.facts.values()),
        chimuf_version=__version__,
        error=run.state.get("error", ""),
        environment=env,
    )


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_info(onednn: Path, precision: str, wait_s: float = 0.0) -> EnvironmentInfo:
    """Versions (and how they compare with the lock), CPU, GPUs and determinism, as of now.

    oneDNN's answer (chimuf.ml.machine) may still be on its way; `wait_s` waits for it.
    """
    packages = environment.installed_dependencies()
    cpuinfo = environment.read_cpuinfo()
    chosen = precision_choice(precision)
    return EnvironmentInfo(
        python=platform.python_version(),
        packages=packages,
        packages_digest=environment.versions_digest(packages),
        lock=environment.lock_info(environment.find_lock(), packages),
        cpu=environment.cpu_model(cpuinfo),
        cpu_features=environment.cpu_features(environment.cpu_flags(cpuinfo)),
        onednn_isa=machine.onednn_isa(onednn, wait_s),
        onednn_settings=machine.onednn_settings(),
        gpus=machine.gpu_names(),
        op_determinism=machine.determinism_enabled(),
        precision=chosen.precision,
        precision_reason=chosen.reason,
    )


def hardware_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def print_headline(console: Console, run_dir: Path, results: Results,
                   rendered: ReportOutcome) -> None:
    """What the study found, in a few lines: the verdict on chance first when the final model
    is not better than guessing (chimuf.report.claims words it, for the report too)."""
    console.info("")
    for line in headline_lines(results):
        console.info(line)
    for label, rel in (("HTML", rendered.html), ("PDF", rendered.pdf)):
        if rel:
            console.info(f"{label} report: {run_dir / rel}")


# --- where the data is -------------------------------------------------------------------------

DATA_HELP = (
    "Get the Kaggle dataset 'Muffin vs chihuahua image classification' (samuelcortinhas/"
    "muffin-vs-chihuahua-image-classification), e.g. with `python -c \"import kagglehub; "
    "print(kagglehub.dataset_download('samuelcortinhas/muffin-vs-chihuahua-image-classification'))\"`"
    ", or use any folder with one sub-folder of images per class; then pass it with --data DIR, "
    "set `data.dir` in the config, or set CHIMUF_DATA."
)


def resolve_data_dir(flag: str | None, config: StudyConfig, project_dir: Path) -> Path:
    """--data, else the config's data.dir, else $CHIMUF_DATA, else data/ in the project."""
    candidates = [
        ("--data", flag),
        ("data.dir in the config", config.data.dir or None),
        ("CHIMUF_DATA", os.environ.get("CHIMUF_DATA")),
        ("the project's data/ folder", str(project_dir / "data")),
    ]
    for source, value in candidates:
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"data folder `{path}` (from {source}) does not exist. {DATA_HELP}")
            if not any(child.is_dir() for child in path.iterdir()):
                raise DataError(
                    f"data folder `{path}` (from {source}) has no class sub-folders. {DATA_HELP}"
                )
            return path.resolve()
    raise AssertionError("unreachable: the project data/ candidate is always set")
