"""Where a study's folders are: the data, the run, the shared image cache.

One owner for the rules the command line and the Python API share. Nothing is decided at import:
the working directory is read when a folder is resolved, so a notebook that changes directory, or
a program that imports chimuf before it does, gets the folder it means.

    data   --data, else the config's data.dir, else $CHIMUF_DATA, else ./data; with a labels CSV
           (data.labels_csv, --labels), the CSV's folder
    given  data.test_dir, data.val_dir (--test-dir, --val-dir): folders that must exist
    run    --out, else ./runs/<profile>
    cache  the config's data.cache_dir, else $CHIMUF_CACHE_DIR, else ./runs/cache
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from chimuf.core.config import StudyConfig
from chimuf.core.errors import ConfigError, DataError

DATA_ENV = "CHIMUF_DATA"
CACHE_ENV = "CHIMUF_CACHE_DIR"

DATA_HELP = (
    "Get the Kaggle dataset 'Muffin vs chihuahua image classification' (samuelcortinhas/"
    "muffin-vs-chihuahua-image-classification), e.g. with `python -c \"import kagglehub; "
    "print(kagglehub.dataset_download('samuelcortinhas/muffin-vs-chihuahua-image-classification'))\"`"
    ", or use any folder with one sub-folder of images per class; then pass it with --data DIR, "
    "set `data.dir` in the config, or set CHIMUF_DATA."
)


@dataclass(frozen=True)
class StudyPaths:
    """The folders of a study, absolute; the labels CSV and the given folders when there are."""

    data_dir: Path
    run_dir: Path
    cache_dir: Path
    labels_csv: Path | None = None
    test_dir: Path | None = None
    val_dir: Path | None = None


def study_paths(config: StudyConfig, data: str | Path | None = None, out: str | Path | None = None,
                cwd: Path | None = None) -> StudyPaths:
    """The data, run and cache folders of a study (the module's rules), checked and absolute."""
    cwd = cwd or Path.cwd()
    labels = given_path(config.data.labels_csv, "data.labels_csv (--labels)", cwd, folder=False)
    data_dir = labels.parent if labels else resolve_data_dir(None if data is None else str(data), config, cwd)
    return StudyPaths(data_dir, run_folder(out, config, cwd).resolve(), cache_folder(config, cwd).resolve(),
                      labels, given_path(config.data.test_dir, "data.test_dir (--test-dir)", cwd),
                      given_path(config.data.val_dir, "data.val_dir (--val-dir)", cwd))


def given_path(value: str, source: str, cwd: Path, folder: bool = True) -> Path | None:
    """A folder (or file) the config names, relative to `cwd`, checked; None when not set."""
    if not value:
        return None
    path = (cwd / Path(value).expanduser()).resolve()
    kind = "folder" if folder else "file"
    if not (path.is_dir() if folder else path.is_file()):
        raise DataError(f"{source} names `{path}`, which is not an existing {kind}; pass an existing {kind}")
    return path


def resolve_data_dir(flag: str | None, config: StudyConfig, cwd: Path) -> Path:
    """--data, else the config's data.dir, else $CHIMUF_DATA, else data/ in `cwd`."""
    candidates = [
        ("--data", flag),
        ("data.dir in the config", config.data.dir or None),
        (DATA_ENV, os.environ.get(DATA_ENV)),
        ("the project's data/ folder", str(cwd / "data")),
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


def run_folder(out: str | Path | None, config: StudyConfig, cwd: Path | None = None) -> Path:
    """--out, else runs/<profile> in `cwd`; a path that is a file is refused."""
    path = Path(out) if out else (cwd or Path.cwd()) / "runs" / config.profile
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run folder `{path}` (--out) exists and is not a folder; a run folder holds "
                          "run.json, results.json and the stages' files. Pass a new or existing folder")
    return path


def cache_folder(config: StudyConfig, cwd: Path | None = None) -> Path:
    """Where decoded images are cached, shared by every run on the same data and size."""
    return Path(config.data.cache_dir or os.environ.get(CACHE_ENV) or (cwd or Path.cwd()) / "runs" / "cache")
