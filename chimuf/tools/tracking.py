"""Logging a run to MLflow, so it can be found beside others in an experiment tracker.

    chimuf study --mlflow URI      the study logs itself once its stages are done
    chimuf track RUN --mlflow URI  an existing run folder, after the fact

What is logged, all from results.json and the run folder (no TensorFlow): the config as params
(dotted keys, as `chimuf config` prints them); tags with the run id and status, the data digest,
the seed, the software versions and the hardware; each stage's headline metrics (test accuracy and
AUC with their intervals, per-class precision/recall/F1, k-fold mean and spread, the search's best
score, every training's best validation accuracy) and, step by step, every epoch of every
training, fold and trial; and as artifacts results.json, the report (HTML and PDF) and the model
to take home (export/: the .keras file, its classes and threshold, its TFLite file).

A run is logged once: its MLflow run carries the digest of what it found
(`chimuf.results_digest`), and a second logging of the same results is skipped. The tag
`chimuf.logged` is set last, once params, metrics and artifacts are all in: a run without it was
cut off half-way (a crash, a lost server), and a retry deletes it and logs the run again.

A run folder may come from someone else: only regular files inside the run are logged, each within
a size cap; a link out of the run, a FIFO or a device is refused before anything is logged. A tracker that
cannot be reached, or refuses, is a one-line warning: the study has finished either way.

Where it goes: a URI with a scheme (http://, sqlite:///, postgresql://, databricks, file:) as given;
a plain local path is a folder holding an SQLite store, PATH/mlflow.db, with the artifacts beside it
in PATH/artifacts (MLflow's own default store is SQLite too; it keeps `file:` stores in
maintenance mode and, from 3.13, refuses them unless MLFLOW_ALLOW_FILE_STORE=true, which chimuf sets
for its own calls to a `file:` URI given explicitly). Once logged, chimuf prints the `mlflow ui`
line that shows the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chimuf.core.config import TrackingConfig, flatten
from chimuf.core.console import Console
from chimuf.core.environment import environ_for
from chimuf.core.errors import ConfigError, DataError
from chimuf.core.files import inside
from chimuf.core.headline import headline_numbers, trainings
from chimuf.core.results import Results, digest

MLFLOW_HINT = "install it with `pip install 'chimuf[mlflow]'`"
STORE_FILE = "mlflow.db"  # in a local folder given as the tracking URI
ARTIFACTS = "artifacts"  # beside it
PARAM_CHARS = 500  # MLflow caps a param value (6 000 characters today); long lists are cut here
BATCH = 900  # metrics per log_batch call (MLflow's limit is 1 000)
LOGGED_TAG = "chimuf.logged"  # set last: the MLflow run is complete
MAX_ARTIFACT_BYTES = 4 * 2**30  # one file: chimuf's largest (a model within model_files limits) is far below
MAX_ARTIFACTS_BYTES = 8 * 2**30  # all of a run's artifacts together


def check_mlflow(cfg: TrackingConfig) -> None:
    """Before any work: `tracking.mlflow_uri` needs the mlflow package."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"`tracking.mlflow_uri` is {cfg.mlflow_uri!r}, but the mlflow package is not "
                          f"installed; {MLFLOW_HINT}, or leave --mlflow out") from None


def log_run(results: Results, run_dir: Path, cfg: TrackingConfig, console: Console) -> str | None:
    """Log `results` (the run in `run_dir`) to `cfg.mlflow_uri`; the MLflow run id, or None when the
    tracker could not be reached (a warning says why) or had this run already (said too)."""
    import mlflow
    import requests

    uri = tracking_uri(cfg.mlflow_uri)
    try:
        folder = local_folder(cfg.mlflow_uri)
        if folder is not None:
            (folder / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        with mlflow_calls(uri):
            run_id = log_to(mlflow.tracking.MlflowClient(uri), results, run_dir, cfg, console)
            console.info(f"MLflow: see it with `{ui_command(uri)}`")
            return run_id
    except (mlflow.exceptions.MlflowException, requests.RequestException, OSError, ValueError,
            DataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        console.warn(f"MLflow at {cfg.mlflow_uri} could not log this run ({first[:300]}); the study's "
                     f"results are in {run_dir}. Log it later with `chimuf track {run_dir} --mlflow URI`")
        return None


def log_to(client: Any, results: Results, run_dir: Path, cfg: TrackingConfig, console: Console) -> str | None:
    experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(cfg.mlflow_experiment,
                                                   artifact_location=artifact_location(cfg.mlflow_uri)))
    found = results_digest(results)
    files = artifact_files(run_dir)  # refused before anything is logged
    for earlier in client.search_runs([experiment_id], max_results=100,
                                      filter_string=f"tags.`chimuf.results_digest` = '{found}'"):
        if earlier.data.tags.get(LOGGED_TAG) == "true":
            console.info(f"MLflow: this run's results are logged already (run {earlier.info.run_id})")
            return earlier.info.run_id
        console.info(f"MLflow: run {earlier.info.run_id} was logged only in part; logging it again")
        client.delete_run(earlier.info.run_id)
    run = client.create_run(experiment_id, run_name=results.run.run_id, tags=tags_of(results, found))
    run_id = run.info.run_id
    from mlflow.entities import Metric, Param

    params = [Param(k, v) for k, v in params_of(results).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=params[start:start + 100])
    metrics = [Metric(key, value, 0, step) for key, value, step in metrics_of(results)]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])
    for path, folder in files:
        client.log_artifact(run_id, str(path), folder or None)
    client.set_terminated(run_id, "FINISHED" if results.run.status == "finished" else "KILLED")
    client.set_tag(run_id, LOGGED_TAG, "true")  # last: everything above is in
    console.info(f"MLflow: logged as run {run_id} of experiment `{cfg.mlflow_experiment}` "
                 f"at {tracking_uri(cfg.mlflow_uri)}")
    return run_id


# --- where the store is ------------------------------------------------------------------------

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # "sqlite:", "http:", "file:"; not "C:" (a drive)


def local_folder(setting: str) -> Path | None:
    """The folder a plain local path names (its SQLite store goes in it); None for a URI."""
    if not setting or setting == "databricks" or SCHEME.match(setting):
        return None
    return Path(setting).expanduser().resolve()


def tracking_uri(setting: str) -> str:
    """The URI MLflow is given: `setting` itself, or for a local folder its SQLite store."""
    folder = local_folder(setting)
    return setting if folder is None else f"sqlite:///{(folder / STORE_FILE).as_posix()}"


def artifact_location(setting: str) -> str | None:
    """Where a new experiment's artifacts go: beside the SQLite store of a local folder (else MLflow
    would put them under the current folder); None lets the tracker decide."""
    folder = local_folder(setting)
    return None if folder is None else (folder / ARTIFACTS).as_uri()


def ui_command(uri: str) -> str:
    """The `mlflow ui` line that shows the store at `uri` (a server's own page needs none)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    prefix = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
    return f"{prefix}mlflow ui --backend-store-uri {shlex.quote(uri)}"


@contextlib.contextmanager
def mlflow_calls(uri: str) -> Iterator[None]:
    """MLflow's environment for chimuf's calls only: an unreachable server answers within seconds
    (no minutes of retries), and a `file:` store is allowed (see the module doc)."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    if uri.startswith("file:"):
        wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with environ_for(wanted, override=False):
        yield


# --- what is logged ----------------------------------------------------------------------------


def results_digest(results: Results) -> str:
    """What the run found, without its timings: two loggings of the same results have the same."""
    outcomes = {name: getattr(results, name) for name in ("train", "tune", "final", "evaluate", "kfold")}
    return digest({"run_id": results.run.run_id, "status": results.run.status, "outcomes": outcomes})


def tags_of(results: Results, results_digest_value: str) -> dict[str, str]:
    run = results.run
    tags = {"chimuf.run_id": run.run_id, "chimuf.status": run.status, "chimuf.profile": run.profile,
            "chimuf.seed": str(run.seed), "chimuf.data_digest": run.data_digest,
            "chimuf.version": run.chimuf_version, "chimuf.commit": run.commit,
            "chimuf.hardware": run.hardware,
            "chimuf.results_digest": results_digest_value}
    tags.update({f"versions.{name}": version for name, version in run.packages.items()})
    return tags


def params_of(results: Results) -> dict[str, str]:
    def text(value: Any) -> str:
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        return shown[:PARAM_CHARS]

    return {key: text(value) for key, value in flatten(results.run.config).items()}


def metrics_of(results: Results) -> list[tuple[str, float, int]]:
    """(key, value, step): the headline numbers at step 0, every epoch at its own step."""
    out: list[tuple[str, float, int]] = []

    def add(key: str, value: Any, step: int = 0) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out.append((key, float(value), step))

    for number in headline_numbers(results):
        add(number.key, number.value)
        if number.sd is not None:
            add(f"{number.key}_sd", number.sd)
        elif number.interval is not None:
            add(f"{number.key}_low", number.interval.low)
            add(f"{number.key}_high", number.interval.high)
    if results.kfold is not None:
        for fold in results.kfold.folds:
            add_history(add, f"fold{fold.fold}", fold.history)
    if results.tune is not None:
        for trial in results.tune.trials:
            add_history(add, f"trial_{trial.trial_id}", trial.history)
    for training in trainings(results):
        add_history(add, training.name, training.history)
    return out


def add_history(add: Any, name: str, history: list[Any]) -> None:
    for record in history:
        for field in ("loss", "accuracy", "val_loss", "val_accuracy"):
            add(f"{name}.{field}", getattr(record, field), record.epoch)


def artifacts_of(run_dir: Path) -> list[tuple[Path, str]]:
    """(file or folder, artifact folder) of what there is to log."""
    wanted = [(run_dir / "results.json", ""), (run_dir / "report" / "index.html", "report"),
              (run_dir / "report" / "index.pdf", "report"), (run_dir / "export", "model")]
    return [(path, folder) for path, folder in wanted if path.exists() or path.is_symlink()]


def artifact_files(run_dir: Path) -> list[tuple[Path, str]]:
    """(regular file, artifact folder) of every file to log, each checked: inside the run (links
    that lead out are refused), a regular file (no FIFO, device or socket), within the size caps.
    Folders are walked without following links."""
    files: list[tuple[Path, str]] = []
    for path, folder in artifacts_of(run_dir):
        if path.is_dir() and not path.is_symlink():
            for parent, dirs, names in os.walk(path, followlinks=False):
                here = Path(parent)
                relative = here.relative_to(path).as_posix()
                sub = folder if relative == "." else f"{folder}/{relative}"
                for name in dirs:  # a link to a folder: os.walk lists it, never enters it
                    if (here / name).is_symlink():
                        files.append((here / name, sub))
                files += [(here / name, sub) for name in sorted(names)]
        else:
            files.append((path, folder))
    total = 0
    for path, _ in files:
        total += checked_size(path, run_dir)
        if total > MAX_ARTIFACTS_BYTES:
            raise DataError(f"the files of run `{run_dir}` come to more than {MAX_ARTIFACTS_BYTES:,} bytes; "
                            "not a run chimuf wrote: nothing was logged")
    return files


def checked_size(path: Path, run_dir: Path) -> int:
    """The size of `path`, a regular file inside the run of at most MAX_ARTIFACT_BYTES; DataError
    (nothing logged yet) otherwise."""
    real = inside(path, run_dir, "run file", DataError)
    try:
        info = real.stat()
    except OSError as exc:
        raise DataError(f"run file `{path}` cannot be read ({exc.strerror}); nothing was logged") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"run file `{path}` is not a regular file (a FIFO, device or folder link); "
                        "nothing was logged: remove it and retry")
    if info.st_size > MAX_ARTIFACT_BYTES:
        raise DataError(f"run file `{path}` has {info.st_size:,} bytes, more than the {MAX_ARTIFACT_BYTES:,} "
                        "a run's file may have; nothing was logged")
    return info.st_size

