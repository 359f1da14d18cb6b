"""chimuf from Python: run a study, read a run, use its model, and a run's tables as DataFrames.

    import chimuf

    run = chimuf.run_study("photos/", profile="quick", out="runs/quick", train={"epochs": 4})
    run.results.evaluate.accuracy          # every number, as the typed outcomes of results.json
    run.trainings()                        # one row per training: a pandas DataFrame
    chimuf.predict(run.model_path, ["a.jpg", "b.jpg"])
    chimuf.load_run("runs/quick").folds()  # a finished run, read back later

The same study as `chimuf study`, with the same config checks and run folder; errors are the
chimuf exceptions of chimuf.core.errors (ConfigError, DataError, ...), raised, not printed. In a
Jupyter notebook the progress is rich's notebook display (with ipywidgets installed:
`pip install 'chimuf[notebook]'`). TensorFlow is loaded by the functions that train or predict,
never by `import chimuf`; pandas by the table methods. docs/api.md has a worked example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core import folders
from chimuf.core.config import AuditConfig, load_config
from chimuf.core.console import Console
from chimuf.core.errors import ConfigError
from chimuf.core.headline import headline_numbers, trainings
from chimuf.core.results import Results, TrainingOutcome
from chimuf.report import read_results
from chimuf.report.project import check_project_dir, project_dir
from chimuf.tools.compare import Comparison, compare_runs

if TYPE_CHECKING:
    import pandas as pd

    from chimuf.tools.evaluate_folder import FolderEvaluation
    from chimuf.tools.predict import FilePrediction

__all__ = ["StudyRun", "compare", "evaluate", "load_run", "predict", "run_study"]


# --- running and reading -----------------------------------------------------------------------


def run_study(data: str | Path | None = None, profile: str | None = None, out: str | Path | None = None, *,
              config: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
              stop_after: str = "", project: str | Path | None = None, quiet: bool = False,
              callbacks: Sequence[Any] = (), candidates: Mapping[str, Any] | None = None,
              **settings: Any) -> StudyRun:
    """Run (or resume) the study, as `chimuf study` does, and return the run.

    data      the data folder (one sub-folder per class); None: data.dir, $CHIMUF_DATA, ./data
    profile   "paper", "quick" or "smoke"; None: the config file's, else "paper"
    out       the run folder; None: runs/<profile>. An existing run is resumed.
    config    a TOML file, as `--config`
    overrides settings as a dict, nested or dotted: {"train": {"epochs": 4}} or {"train.epochs": 4}
    settings  the same as keyword arguments: seed=7, train={"epochs": 4}
    project   where the Quarto project of the report goes besides RUN/report (chimuf.report.project)
    callbacks extra Keras callbacks for every training (the six, the final model, the folds, the
              modern recipe); they see each epoch under its real number. They cannot cross
              processes: with callbacks the trainings and folds run one after another here
    candidates your own architectures by name, {"mine": build}: build(image_size=..., seed=...)
              returns a Keras model (ml.architectures.builders); trained, judged and possibly taken home
              beside the others. A dict of settings ({"builders": [...]}) is the config's section.
    """
    from chimuf.ml.tfstart import quiet_tensorflow, start_tensorflow
    from chimuf.study import run_study as study

    builders = {}
    if candidates is not None and all(callable(v) for v in candidates.values()):
        builders = dict(candidates)
    elif candidates is not None:
        settings["candidates"] = candidates  # the config section of that name
    merged = nested({**dict(overrides or {}), **settings})
    cfg = load_config(Path(config) if config is not None else None, profile, merged or None)
    paths = folders.study_paths(cfg, data, out)
    folder = project_dir(Path(project) if project is not None else None, Path.cwd())
    console = Console(quiet=quiet)
    quiet_tensorflow()
    note = start_tensorflow(cfg.train.threads_per_unit)
    if note:
        console.warn(note)
    try:
        study(cfg, paths, console, stop_after=stop_after, callbacks=callbacks,
              project=check_project_dir(folder) if folder is not None else None, candidates=builders)
    finally:
        console.log_to(None)
    return load_run(paths.run_dir)


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.epochs": 4, "kfold": {"folds": 3}} → {"train": {"epochs": 4}, "kfold": {"folds": 3}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *sections, name = key.split(".")
        if len(sections) > 1:
            raise ConfigError(f"setting `{key}` is nested too deep; settings are `section.name`, e.g. "
                              "`train.epochs`")
        target = out.setdefault(sections[0], {}) if sections else out
        if not isinstance(target, dict):
            raise ConfigError(f"setting `{key}` conflicts with `{sections[0]}` given as a value")
        if isinstance(value, Mapping):
            target.setdefault(name, {}).update(value)
        else:
            target[name] = value
    return out


def load_run(run_dir: str | Path) -> StudyRun:
    """A run folder's results (finished or partial), from its results.json."""
    folder = Path(run_dir)
    return StudyRun(folder, read_results(folder))


def compare(run_a: str | Path, run_b: str | Path) -> Comparison:
    """What differs between two runs, and whether their numbers agree (`chimuf compare`)."""
    return compare_runs(Path(run_a), Path(run_b))


# --- a saved model -----------------------------------------------------------------------------


def evaluate(model: str | Path, folder: str | Path, console: Console | None = None) -> FolderEvaluation:
    """Metrics of a saved model (.keras) on a labelled folder, as `chimuf evaluate`."""
    from chimuf.ml.tfstart import start_tensorflow
    from chimuf.tools.evaluate_folder import evaluate_folder

    start_tensorflow()
    return evaluate_folder(Path(model), Path(folder), AuditConfig(), console or Console(quiet=True))


def predict(model: str | Path, images: Iterable[str | Path],
            console: Console | None = None) -> list[FilePrediction]:
    """Class and probability of each image file, as `chimuf predict`; a bad file gets its reason."""
    from chimuf.ml.tfstart import start_tensorflow
    from chimuf.tools.predict import predict_files

    start_tensorflow()
    files = [Path(p) for p in images]
    return predict_files(Path(model), files, AuditConfig(), console or Console(quiet=True))


# --- a run -------------------------------------------------------------------------------------


@dataclass
class StudyRun:
    """A run folder and its results: typed outcomes (`results`), tables, the final model."""

    dir: Path
    results: Results

    @property
    def status(self) -> str:
        return self.results.run.status

    @property
    def model_path(self) -> Path | None:
        """The final model's .keras file; None before the final stage has run."""
        final = self.results.final
        return self.dir / final.model_path if final else None

    @property
    def report_html(self) -> Path | None:
        path = self.dir / "report" / "index.html"
        return path if path.is_file() else None

    @property
    def report_pdf(self) -> Path | None:
        path = self.dir / "report" / "index.pdf"
        return path if path.is_file() else None

    def evaluate(self, folder: str | Path) -> FolderEvaluation:
        """The final model on another labelled folder."""
        return evaluate(self.require_model(), folder)

    def predict(self, images: Iterable[str | Path]) -> list[FilePrediction]:
        """The final model's class and probability for each image file."""
        return predict(self.require_model(), images)

    def require_model(self) -> Path:
        if self.model_path is None:
            raise ConfigError(f"run `{self.dir}` has no final model yet; run the study past its `final` "
                              "stage first")
        return self.model_path

    # Tables: one row per item, plain columns; every number as results.json has it.

    def trainings(self) -> pd.DataFrame:
        """Every training (the six, the final model, the modern recipe, the pretrained baseline):
        epochs, best epoch, validation scores, speed."""
        rows = [training_row(t) for t in self.trainings_list()]
        return frame(rows, ["name", "architecture", "augmented", "params", "epochs_run", "best_epoch",
                            "stopped_early", "best_val_loss", "best_val_accuracy", "wall_s",
                            "images_per_s", "precision"])

    def epochs(self) -> pd.DataFrame:
        """Every epoch of every training (long format: one row per training and epoch)."""
        rows = [{"training": t.name, **asdict(e)} for t in self.trainings_list() for e in t.history]
        return frame(rows, ["training", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "auc",
                            "val_auc", "wall_s"])

    def trials(self) -> pd.DataFrame:
        """The tuning trials: status, score, epochs and the six hyperparameters."""
        tune = self.results.tune
        rows = [{"trial_id": t.trial_id, "status": t.status, "score": t.score, "epochs": t.epochs,
                 "wall_s": t.wall_s, **asdict(t.hyperparameters), "worker": t.worker, "error": t.error}
                for t in (tune.trials if tune else [])]
        return frame(rows, ["trial_id", "status", "score", "epochs", "wall_s", "worker", "error"])

    def folds(self) -> pd.DataFrame:
        """The cross-validation folds: accuracy and loss on each fold's held-out part."""
        kfold = self.results.kfold
        rows = [{f.name: getattr(fold, f.name) for f in fields(fold) if f.name != "history"}
                for fold in (kfold.folds if kfold else [])]
        return frame(rows, ["fold", "status", "n_train", "n_validation", "accuracy", "loss", "epochs_run",
                            "wall_s", "error"])

    def predictions(self) -> pd.DataFrame:
        """The final model on every test image: true and predicted class, P(classes[1]), right."""
        e = self.results.evaluate
        rows = [{"path": p.path, "true": e.classes[p.true_id], "predicted": e.classes[p.predicted_id],
                 f"p_{e.classes[1]}": p.probability, "right": p.right}
                for p in (e.predictions.items() if e else [])]
        return frame(rows, ["path", "true", "predicted", "right"])

    def per_class(self) -> pd.DataFrame:
        """Precision, recall, F1 (with its interval) and support of each class on the test split."""
        e = self.results.evaluate
        rows = [{"class": m.label, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                 "f1_low": m.f1_interval.low if m.f1_interval else None,
                 "f1_high": m.f1_interval.high if m.f1_interval else None, "support": m.support}
                for m in (e.per_class if e else [])]
        return frame(rows, ["class", "precision", "recall", "f1", "f1_low", "f1_high", "support"])

    def headline(self) -> pd.DataFrame:
        """The run's headline numbers (chimuf.core.headline: the report's, the console's, MLflow's):
        key, words, value, and the interval where the number has one."""
        rows = [{"key": n.key, "label": n.label, "value": n.value,
                 "low": n.interval.low if n.interval else None,
                 "high": n.interval.high if n.interval else None, "interval": n.interval_kind}
                for n in headline_numbers(self.results)]
        return frame(rows, ["key", "label", "value", "low", "high", "interval"])

    def trainings_list(self) -> list[TrainingOutcome]:
        """The six trainings, the final model and the candidates beyond the paper."""
        return trainings(self.results)


def training_row(t: TrainingOutcome) -> dict[str, Any]:
    return {f.name: getattr(t, f.name) for f in fields(t)
            if f.name not in ("layers", "history", "figure", "hyperparameters", "history_csv")}


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A DataFrame of `rows`; with no rows (a stage not run yet), an empty one with `columns`."""
    import pandas as pd

    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
