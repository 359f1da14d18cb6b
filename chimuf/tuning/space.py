"""The search space: every value each of the six hyperparameters may take (paper section 6).

The ranges come from TuneConfig as [min, max, step], one per name of chimuf.core.hyperparameters.
Filters and units are Keras Tuner `Int` ranges; rates are an ordered `Choice` of exact decimals,
since Keras Tuner's `Float(0.0, 0.5, step=0.05)` computes its values by float division and never
offers 0.5, nor 0.15 exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from chimuf.core.errors import StageError
from chimuf.core.hyperparameters import COUNT_NAMES, KIND, NAMES, RATE_NAMES, Hyperparameters
from chimuf.core.results import SearchDimension

if TYPE_CHECKING:
    import keras_tuner as kt

    from chimuf.core.config import TuneConfig


def search_space(cfg: TuneConfig) -> list[SearchDimension]:
    """Every value each hyperparameter may take: min, min + step, ..., up to max."""
    return [SearchDimension(name, dimension_values(name, cfg.range_of(name))) for name in NAMES]


def dimension_values(name: str, lo_hi_step: tuple[float, ...]) -> list[float]:
    low, high, step = lo_hi_step
    count = math.floor((high - low) / step + 1e-9) + 1
    if KIND[name] == "count":
        return [int(low + k * step) for k in range(count)]
    return [round(low + k * step, 10) for k in range(count)]


def declare_space(hp: kt.HyperParameters, cfg: TuneConfig) -> Hyperparameters:
    """Declare the six hyperparameters on `hp` and return this trial's values.

    Keras Tuner returns a value the chief sent without looking at the range, so each is checked
    against the space declared here: a worker never builds a model outside it (whose size the
    study checked against `model_files.max_params`)."""
    values: dict[str, float] = {}
    for name in COUNT_NAMES:
        low, high, step = (int(v) for v in cfg.range_of(name))
        values[name] = int(hp.Int(name, low, high, step=step))
    for name in RATE_NAMES:
        values[name] = float(hp.Choice(name, dimension_values(name, cfg.range_of(name)), ordered=True))
    check_in_space(values, cfg)
    return Hyperparameters.of(values)


def check_in_space(values: dict[str, Any], cfg: TuneConfig) -> None:
    """Refuse (StageError) a trial whose values are not the space's: a chief not to be trusted."""
    for name in NAMES:
        allowed = dimension_values(name, cfg.range_of(name))
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in allowed:
            raise StageError(f"the chief asked for {name} = {str(value)[:40]}, outside this worker's "
                             f"search space ({allowed[0]} to {allowed[-1]}); refused: check that chief "
                             "and worker share one config")


def trial_values(values: dict[str, Any]) -> Hyperparameters:
    """A Keras Tuner trial's values as Hyperparameters (ints, and rates of 10 digits)."""
    return Hyperparameters.of(values)
