"""The whole study, stage by stage, as the paper ran it.

    audit → split → (plan) → cache → train ×6 → tune → final → evaluate → kfold → labels
      → explain → modern → pretrained → own → beyond → choose → export → report

Every stage is declared once in chimuf.stages.specs (its inputs, its outcome, its work); this file
walks that list: the engine runs a stage or reuses it when its inputs are unchanged, and after
every stage the run's results.json is rewritten, so even a partial run has a report.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chimuf.core import environment
from chimuf.core.config import StudyConfig, as_dict, differences
from chimuf.core.console import Console
from chimuf.core.engine import Run, unwrapped
from chimuf.core.errors import ConfigError
from chimuf.core.files import atomic_write_json, now_iso
from chimuf.core.folders import StudyPaths
from chimuf.core.plan import Plan, StudyClock
from chimuf.core.results import (
    SCHEMA_VERSION,
    STAGES,
    ConfigDifference,
    EnvironmentInfo,
    Results,
    RunInfo,
    recorded_model_digests,
)
from chimuf.ml import machine
from chimuf.ml.architectures import builders
from chimuf.ml.architectures.builders import Builder
from chimuf.ml.architectures.models import Blueprint, blueprint, parameter_count, precision_choice
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.training.fit import Monitoring
from chimuf.report.claims import headline_lines
from chimuf.report.project import publish
from chimuf.stages import plan
from chimuf.stages.specs import SPECS, TRAINING_STAGES, Inputs, Setting, StageSpec
from chimuf.tools import tracking

if TYPE_CHECKING:
    from pathlib import Path

    from chimuf.tuning.protocol import Address

__all__ = ["StudyPaths", "run_study"]

ONEDNN_WAIT_S = 60.0  # at most, for oneDNN's probe before the plan's: a TensorFlow start and one matmul


def run_study(config: StudyConfig, paths: StudyPaths, console: Console, stop_after: str = "",
              tune_chief: Address | None = None, callbacks: Sequence[Any] = (),
              plan_only: bool = False, project: Path | None = None,
              candidates: Mapping[str, Builder] | None = None) -> Results:
    """Run (or resume) every stage of the study in `paths.run_dir`; return its results.

    With `tune_chief`, the search serves its trials to workers at that address (chimuf.tuning).
    `callbacks` are extra Keras callbacks for every training (the six, the final model, the folds).
    With `tracking.mlflow_uri`, what the run found is logged to MLflow once the stages are done.
    With `plan_only`, the study stops after its split and the printed plan of the rest.
    With `project`, the report's Quarto project is also published there (chimuf.report.project).
    `candidates` are the user's own model builders by name, besides `candidates.builders`
    (chimuf.ml.architectures.builders): trained, judged and possibly taken home like the other candidates.
    """
    check_model_sizes(config)
    if config.tracking.mlflow_uri:
        tracking.check_mlflow(config.tracking)
    study = Study(config, paths, console, stop_after, tune_chief, callbacks,
                  builders.all_builders(config.candidates.builders, candidates))
    results = study.run(plan_only, project)
    if config.tracking.mlflow_uri and not plan_only:
        tracking.log_run(results, paths.run_dir, config.tracking, console)
    return results


class Study:
    """One run of the stages: the run folder, the results so far, and how each stage is saved."""

    def __init__(self, config: StudyConfig, paths: StudyPaths, console: Console, stop_after: str,
                 tune_chief: Address | None, callbacks: Sequence[Any],
                 own: Mapping[str, Builder] | None = None):
        self.config, self.paths, self.console, self.stop_after = config, paths, console, stop_after
        machine.enable_determinism(config.train.deterministic)
        self.onednn = machine.start_onednn_probe(paths.cache_dir)  # answers in the background
        self.env = environment_info(self.onednn, config.train.precision)
        self.run_folder = Run(paths.run_dir, console, environment.provenance(self.env.packages_digest))
        self.commit = environment.source_commit()
        self.results = Results(SCHEMA_VERSION, self.run_info())
        board = paths.run_dir / "tensorboard" if config.tracking.tensorboard else None
        self.monitoring = Monitoring(board, tuple(callbacks))
        self.tune_chief = tune_chief
        self.builders = dict(own or {})

    def setting(self) -> Setting:
        paths = self.paths
        return Setting(paths.data_dir, paths.cache_dir, self.config.model_files, self.monitoring,
                       self.tune_chief, paths.labels_csv, paths.test_dir, paths.val_dir, self.builders)

    def run(self, plan_only: bool, project: Path | None) -> Results:
        run, config = self.run_folder, self.config
        self.console.log_to(self.paths.run_dir / "study.log")
        facts = {"profile": config.profile, "seed": config.seed, "data_dir": str(self.paths.data_dir)}
        with run.activate(facts):
            for spec in SPECS:
                if spec.name == "cache":  # the data is split: the plan of the rest, before any work
                    study_plan = self.plan(plan_only)
                    if plan_only:
                        run.stop("split")
                        self.write_results()
                        return self.results
                    self.monitoring = Monitoring(self.monitoring.tensorboard_dir, self.monitoring.callbacks,
                                                 study_plan and StudyClock(study_plan))
                if spec.name == "report":
                    return self.finish(spec, project)
                if self.do(spec):
                    return self.results
                if spec.name == "tune":
                    self.replan()
        raise AssertionError("unreachable: the last spec is the report")

    def do(self, spec: StageSpec[Any]) -> bool:
        """Run (or reuse) one stage and record it in results.json; True when the study should stop
        here (--stop-after: the run is then recorded as `stopped`, resumable)."""
        why_off = self.why_off(spec)
        if why_off:
            self.run_folder.switched_off(spec.name, why_off)
        else:
            setattr(self.results, spec.name, self.stage(spec))
        stopping = spec.name == self.stop_after
        if stopping:
            self.run_folder.stop(spec.name)
        self.write_results()
        return stopping

    def why_off(self, spec: StageSpec[Any]) -> str:
        return spec.off(self.config) or spec.off_here(self.setting())

    def stage(self, spec: StageSpec[Any]) -> Any:
        modelfile.vouch(recorded_model_digests(self.results))  # the study's own files load again
        setting = self.setting()
        inputs = spec.inputs(self.config, self.results, setting)
        outcome = self.run_folder.stage(
            spec.name, inputs, spec.outcome,
            lambda ctx: spec.run(ctx, setting, Inputs(**unwrapped(inputs))),
            still_valid=spec.still_valid,
        )
        if spec.announce is not None:
            spec.announce(outcome, self.console)
        return outcome

    # --- the plan and its clock --------------------------------------------------------------------

    def plan(self, asked: bool) -> Plan | None:
        """The plan of the rest, timed by a short probe of each architecture here, printed; None when
        nothing is left to train (unless `asked`)."""
        run = self.run_folder
        if not asked and all(run.outcome_path(name).exists() for name in TRAINING_STAGES):
            return None
        after_split = STAGES[STAGES.index("split") + 1:]
        finished = [name for name in after_split if run.outcome_path(name).exists()]
        off = [spec.name for spec in SPECS if self.why_off(spec)]
        # The timing probe must have the machine to itself: on a machine's first run oneDNN's own
        # probe (a TensorFlow process, started in __init__) overlapped it and the first architectures
        # probed took up to 1.8× their real epoch time (the fast profile's final model: 35.9 s, ran 20 s).
        machine.onednn_isa(self.onednn, wait_s=ONEDNN_WAIT_S)
        study_plan = plan.plan_study(self.config, self.results.split, done=finished, off=off)
        for line in study_plan.lines():
            self.console.info(line)
        return study_plan

    def replan(self) -> None:
        """Once the search has chosen, the final model and the folds are timed with its choice."""
        clock = self.monitoring.clock
        if (clock is not None and self.results.tune is not None
                and not self.run_folder.outcome_path("kfold").exists()):
            clock.plan = plan.with_chosen(clock.plan, self.config, self.results.split,
                                          self.results.tune.best_hyperparameters)

    # --- the end ----------------------------------------------------------------------------------

    def finish(self, spec: StageSpec[Any], project: Path | None) -> Results:
        """The report, from results.json and the figures alone. Every analysis stage is done, so
        results.json (and the report) say the study finished; run.json says so only once the report
        is rendered too."""
        run = self.run_folder
        # oneDNN's answer has come by now
        self.env = environment_info(self.onednn, self.config.train.precision, wait_s=120)
        self.write_results(status="finished")
        rendered = self.stage(spec)
        # even when the report was reused: this is the latest study
        published = publish(self.paths.run_dir, project) if project is not None else None
        run.finish()
        self.write_results()
        print_headline(self.console, self.paths.run_dir, self.results, rendered)
        if published is not None:  # after the verdict, which comes first
            self.console.info(f"Quarto project {published} holds run {run.run_id}")
        return self.results

    def write_results(self, status: str = "") -> None:
        self.results.run = self.run_info()
        self.results.run.status = status or self.results.run.status
        atomic_write_json(self.paths.run_dir / "results.json", self.results)

    def run_info(self) -> RunInfo:
        run, config, results = self.run_folder, self.config, getattr(self, "results", None)
        audit = results.audit if results is not None else None
        return RunInfo(
            run_id=run.run_id,
            status=run.state.get("status", "running"),
            profile=config.profile,
            seed=config.seed,
            config=as_dict(config),
            config_differences=[ConfigDifference(*d) for d in differences(config) if d[0] != "profile"],
            data_dir=str(self.paths.data_dir),
            data_digest=audit.digest if audit else "",
            packages=environment.headline_versions(self.env.packages),
            hardware=environment.hardware_summary(),
            started_at=run.state.get("started_at", now_iso()),
            updated_at=now_iso(),
            stages=list(run.facts.values()),
            chimuf_version=run.provenance["chimuf"],
            error=run.state.get("error", ""),
            environment=self.env,
            commit=self.commit[0],
            dirty=self.commit[1],
        )


def check_model_sizes(config: StudyConfig) -> None:
    """Refuse, before any work, a study whose models would exceed `model_files.max_params`: their
    saved files would be refused when the later stages open them (chimuf.ml.modelfiles.modelfile)."""
    tune = config.tune
    largest_tuned = Blueprint(tuple(int(tune.range_of(f"conv{i}_filters")[1]) for i in (1, 2, 3)),
                              int(tune.dense_units[1]), None, None)
    plans = [(f"model {n}", blueprint(f"model{n}", None)) for n in config.train.models
             if config.train.enabled]
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


def print_headline(console: Console, run_dir: Path, results: Results, rendered: Any) -> None:
    """What the study found, in a few lines: the verdict on chance first when the final model
    is not better than guessing (chimuf.report.claims words it, for the report too)."""
    console.info("")
    for line in headline_lines(results):
        console.info(line)
    for label, rel in (("HTML", rendered.html), ("PDF", rendered.pdf)):
        if rel:
            console.info(f"{label} report: {run_dir / rel}")
