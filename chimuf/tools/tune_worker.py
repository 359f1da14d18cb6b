"""`chimuf tune-worker --chief HOST:PORT`: run trials of a study's search on this machine.

    wait for the chief → the chief's split and image cache (its run folder, when this machine
    shares it; else made here from the same data, config and seed) → trials until the chief says
    the search is over (chimuf.stages.tune.work_for_chief)

The worker never runs the study's stages in the chief's run folder and never marks its status
(the chief owns it). It asks the engine for the chief's finished split and cache by the inputs their
specs declare (chimuf.stages.specs), so it uses them exactly when the chief's study would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chimuf.core import environment
from chimuf.core.config import StudyConfig, as_dict, flatten
from chimuf.core.console import Console
from chimuf.core.engine import Run
from chimuf.core.errors import ConfigError, StageError
from chimuf.core.files import read_json
from chimuf.core.folders import given_path
from chimuf.core.results import SCHEMA_VERSION, AuditOutcome, CacheOutcome, Results, RunInfo, SplitOutcome
from chimuf.data.audit import audit_sources
from chimuf.data.cache import build_cache, load_images
from chimuf.data.sources import Sources
from chimuf.data.split import split_dataset
from chimuf.ml import machine
from chimuf.stages import tune
from chimuf.stages.specs import CACHE, SPLIT
from chimuf.tuning import protocol
from chimuf.tuning.protocol import Address, ChiefLost, rpc_reason


@dataclass
class WorkerSetup:
    chief: Address
    worker_id: str
    run_dir: Path  # the chief's run folder when shared, else a folder of this machine's own
    cache_dir: Path
    data_dir: Callable[[], Path]  # resolved only when the split and cache must be made here
    chief_timeout_s: float  # how long to wait for the chief, at the start and for each request


def run_worker(config: StudyConfig, setup: WorkerSetup, console: Console) -> int:
    """Run trials for the chief until it says the search is over; how many ran here.

    The worker never marks the run folder's status (the chief owns it); its own files (the
    tuner's state, each trial's best weights and history) go to `run_dir`/tune-workers/<id>/.
    It reads the run folder only once the chief serves: by then the chief's study has written
    its current settings and finished its split and cache there.
    """
    import grpc

    machine.enable_determinism(config.train.deterministic)  # as the chief's study does
    wait_for_chief(setup.chief, setup.chief_timeout_s)
    console.info(f"worker {setup.worker_id}: connected to the tuning chief at {setup.chief}")
    cache, split = worker_data(config, setup, console)
    workdir = setup.run_dir / "tune-workers" / setup.worker_id
    try:
        ran = tune.work_for_chief(load_images(cache), split, config.tune, config.train, config.augment,
                                  config.seed, workdir, setup.worker_id, setup.chief, setup.chief_timeout_s,
                                  console)
    except (grpc.RpcError, ChiefLost) as exc:
        reason = str(exc) if isinstance(exc, ChiefLost) else rpc_reason(exc)
        raise StageError(
            f"worker {setup.worker_id} lost the tuning chief at {setup.chief} ({reason}). When the "
            "chief's study runs again (rerunning it resumes the search), start this worker again"
        ) from None
    console.info(f"worker {setup.worker_id}: the chief says the search is over; {ran} trials ran here")
    return ran


def wait_for_chief(chief: Address, timeout_s: float) -> None:
    import grpc

    channel = protocol.channel(chief)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise StageError(
            f"no tuning chief answered at {chief} within {timeout_s:g} s; start it with `chimuf "
            f"study --tune-chief HOST:{chief.port}` (it listens once the study reaches `tune`), check "
            "the host name, port and firewall, or wait longer with --chief-timeout"
        ) from None
    finally:
        channel.close()


def worker_data(config: StudyConfig, setup: WorkerSetup,
                console: Console) -> tuple[CacheOutcome, SplitOutcome]:
    """The split and image cache the chief trains on: read from its run folder when this worker
    shares it, else made here from the same data, config and seed (the stages are deterministic)."""
    check_same_settings(config, setup.run_dir)
    found = finished_data(config, setup.run_dir, console)
    if found is not None:
        console.info(f"worker {setup.worker_id}: split and image cache from `{setup.run_dir}`")
        return found
    console.info(f"worker {setup.worker_id}: no finished split and cache for these settings in "
                 f"`{setup.run_dir}`; making them here")
    cwd = Path.cwd()
    labels = given_path(config.data.labels_csv, "data.labels_csv", cwd, folder=False)
    data_dir = labels.parent if labels else setup.data_dir()
    given = Sources(data_dir, labels, given_path(config.data.test_dir, "data.test_dir", cwd),
                    given_path(config.data.val_dir, "data.val_dir", cwd))
    audit = audit_sources(given, config.audit, console, max_per_class=config.data.max_per_class,
                          seed=config.seed, positive=config.data.positive)
    split = split_dataset(audit, config.split, config.seed,
                          drop_test_duplicates=config.data.drop_test_duplicates)
    cache = build_cache(audit, data_dir, config.data.image_size, setup.cache_dir, console)
    return cache, split


# The settings a trial's result depends on; a worker must share them with its chief.
TUNING_SETTINGS = ("seed", "data.image_size", "data.max_per_class", "data.positive",
                   "data.drop_test_duplicates", "audit.", "split.", "augment.",
                   "train.", "tune.")
NOT_TUNING_SETTINGS = ("tune.worker_timeout_s",)  # the chief's own


def check_same_settings(config: StudyConfig, run_dir: Path) -> None:
    """When `run_dir` holds the chief's results.json, this worker's settings must be the chief's."""
    saved = read_json(run_dir / "results.json")
    if saved is None or not isinstance(saved.get("run"), dict) or "config" not in saved["run"]:
        return
    chief, here = flatten(saved["run"]["config"]), flatten(as_dict(config))
    differ = [f"{key}: {chief.get(key)!r} there, {here[key]!r} here" for key in here
              if key.startswith(TUNING_SETTINGS) and key not in NOT_TUNING_SETTINGS
              and chief.get(key) != here[key]]
    if differ:
        raise ConfigError(
            f"this worker's settings differ from the run's in `{run_dir / 'results.json'}`: "
            f"{'; '.join(differ[:5])}. Start the worker with the chief's --config, --profile and "
            "--seed (`chimuf config` prints them), or give it another --out"
        )


def provenance() -> dict[str, str]:
    """This installation's provenance, as the chief's study records it in every stage's inputs."""
    return environment.provenance(environment.versions_digest(environment.installed_dependencies()))


def finished_data(config: StudyConfig, run_dir: Path,
                  console: Console) -> tuple[CacheOutcome, SplitOutcome] | None:
    """The run folder's finished split and cache, if the chief's study would reuse them with this
    config (the engine's fingerprint of their inputs) and the cache file is still there; else None."""
    run = Run(run_dir, console, provenance())  # read only: no activate, no stage
    audit = run.load_outcome("audit", AuditOutcome)
    if audit is None:
        return None
    so_far = Results(SCHEMA_VERSION, RunInfo.unnamed(), audit=audit)
    split = run.reusable_outcome("split", SPLIT.inputs(config, so_far, None), SplitOutcome)
    cache = run.reusable_outcome("cache", CACHE.inputs(config, so_far, None), CacheOutcome)
    if split is None or cache is None or not Path(cache.images_path).is_file():
        return None
    return cache, split
