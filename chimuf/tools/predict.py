"""`chimuf predict MODEL IMAGE...`: the class and its probability for each image file.

A file the audit would reject gets its reason in `error`, and the other files are still
predicted (chimuf.ml.modelfiles.predictor reads and scores them as the study does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.console import printable
from chimuf.core.errors import ConfigError, ModelError
from chimuf.core.files import csv_text
from chimuf.core.results import load_results, to_jsonable
from chimuf.ml.modelfiles.predictor import (
    Classifier,
    Scored,
    describe_threshold,
    load_classifier,
    numbered_classes,
    score_files,
)

if TYPE_CHECKING:
    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console

FORMATS = ("table", "json", "csv")


@dataclass
class FilePrediction:
    path: str  # as given on the command line
    label: str  # predicted class; "" when the file could not be used
    probability: float  # the model's probability of `label`; NaN when the file could not be used
    error: str = ""  # why the file could not be used; "" when it was predicted


def model_of(path: Path) -> Path:
    """The model file `path` names: a `.keras` file as given; a run folder, the model its study
    took home (export stage: the candidate chosen on validation, its threshold beside it)."""
    path = Path(path)
    if not path.is_dir():
        return path
    results_file = path / "results.json"
    if not results_file.is_file():
        raise ModelError(f"`{path}` is a folder without results.json; pass a `.keras` file or a run "
                         "folder (runs/<run-id>)")
    export = load_results(results_file.read_text(encoding="utf-8")).export
    if export is None:
        raise ModelError(f"run `{path}` has no exported model yet (its export stage has not run); "
                         "finish the study (chimuf study --out RUN) or pass a `.keras` file")
    return path / export.model_path


def predict_files(model_path: Path, files: list[Path], audit_cfg: AuditConfig, console: Console,
                  threshold: float | None = None, ensemble: Sequence[Path] = (),
                  flips: bool = False, limits: ModelFilesConfig | None = None) -> list[FilePrediction]:
    """One FilePrediction per file, in the order given; unreadable files carry their reason.

    A file's class is decided at the model's own threshold (its sidecar's), or at `threshold`;
    with `ensemble`, by the mean probability of all the models; with `flips`, of each image and
    its mirror. `limits` bound what a model file may hold (chimuf.ml.modelfiles.modelfile).
    """
    classifier = load_classifier(model_path, threshold, ensemble, flips, limits)
    classes = numbered_classes(classifier, console)
    console.info(f"deciding at {describe_threshold(classifier)}")
    scored = score_files(classifier, [Path(f) for f in files], audit_cfg, console)
    return [as_prediction(s, classifier, classes) for s in scored]


def as_prediction(scored: Scored, classifier: Classifier, classes: list[str]) -> FilePrediction:
    if scored.probability is None:
        return FilePrediction(str(scored.path), "", float("nan"), scored.error)
    p = scored.probability
    if classifier.decide(p) == 1:
        return FilePrediction(str(scored.path), classes[1], p)
    return FilePrediction(str(scored.path), classes[0], 1.0 - p)


# --- showing -----------------------------------------------------------------------------------


def format_predictions(predictions: list[FilePrediction], fmt: str) -> str:
    """The predictions as an aligned table, a JSON list, or CSV with a header row."""
    if fmt not in FORMATS:
        raise ConfigError(f"output format must be one of {', '.join(FORMATS)}; got `{fmt}`")
    if fmt == "json":
        return json.dumps(to_jsonable(predictions), indent=1, ensure_ascii=False, allow_nan=False)
    if fmt == "csv":
        rows = ([p.path, p.label, "" if p.error else f"{p.probability:.6f}", p.error] for p in predictions)
        return csv_text(["path", "label", "probability", "error"], rows).rstrip("\n")
    return format_table(predictions)


def format_table(predictions: list[FilePrediction]) -> str:
    """An aligned table; names are shown escaped (chimuf.core.console.printable), so a file name
    cannot move the cursor, break a line or reverse the text on the user's terminal."""
    rows = [(printable(p.path), printable(p.label), p) for p in predictions]
    width = max([len("image")] + [len(path) for path, _, _ in rows])
    label_width = max([len("class")] + [len(label) for _, label, _ in rows])
    lines = [f"{'image':<{width}}  {'class':<{label_width}}  probability"]
    for path, label, p in rows:
        if p.error:
            lines.append(f"{path:<{width}}  {'-':<{label_width}}  error: {printable(p.error)}")
        else:
            lines.append(f"{path:<{width}}  {label:<{label_width}}  {p.probability:.3f}")
    return "\n".join(lines)
