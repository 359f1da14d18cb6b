"""chimuf: a complete, reproducible CNN study for binary image classification, and its report.

The Python API (chimuf.api; docs/api.md has a worked example):

    run_study(data, profile, out, **settings)   run or resume the study → StudyRun
    load_run(run_dir)                           a run's results → StudyRun
    StudyRun                                    .results, .trainings() .epochs() .trials() .folds()
                                                .predictions() .per_class() (pandas), .model_path
    evaluate(model, folder)                     a saved model's metrics on a labelled folder
    predict(model, images)                      class and probability per image file
    compare(run_a, run_b)                       what differs between two runs

Importing chimuf imports neither TensorFlow nor matplotlib: the API is loaded on first use and
the heavy libraries inside the functions that need them, so `chimuf --help` and `chimuf report`
start instantly.
"""

from __future__ import annotations

from typing import Any

from chimuf.version import __version__

API = ("StudyRun", "compare", "evaluate", "load_run", "predict", "run_study")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    """The API's names, imported from chimuf.api when first asked for."""
    if name in API:
        from chimuf import api

        return getattr(api, name)
    raise AttributeError(f"module 'chimuf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
