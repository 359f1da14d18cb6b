"""The six hyperparameters of the tuned model-3 family (paper section 6), in one place.

The search varies them (chimuf.tuning), the config gives each a range under the same name
(`[tune] conv1_filters = [16, 64, 16]`), the models are built from them (chimuf.ml.architectures.models), and
the report names them. `Hyperparameters` is that one list: a frozen dataclass that also reads as
a mapping (`h["dense_units"]`, `dict(h)`), so it is saved in JSON as the plain object
`{"conv1_filters": 16, ...}` and compares equal to that dict.

    MODEL3      model 3's own values (paper 4.3): the family's member that is model 3
    PAPER_BEST  what the paper's search found (section 6): 16 / 96 / 192 filters, 96 units,
                dropouts 0.05 and 0.4
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from chimuf.core.errors import ConfigError

COUNT, RATE = "count", "rate"  # whole numbers of at least 1; rates within [0, 1)


def hyperparameter(kind: str, label: str) -> Any:
    return field(metadata={"kind": kind, "label": label})


@dataclass(frozen=True, eq=False)
class Hyperparameters(Mapping[str, float]):
    conv1_filters: int = hyperparameter(COUNT, "Filters, convolution 1")
    conv2_filters: int = hyperparameter(COUNT, "Filters, convolution 2")
    conv3_filters: int = hyperparameter(COUNT, "Filters, convolution 3")
    dense_units: int = hyperparameter(COUNT, "Units, dense layer")
    dropout_conv: float = hyperparameter(RATE, "Dropout, convolution blocks")
    dropout_dense: float = hyperparameter(RATE, "Dropout, dense layer")

    # Mapping: the names in declaration order, the values as given.
    def __getitem__(self, name: str) -> float:
        if name not in NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)

    def __repr__(self) -> str:
        return "Hyperparameters(" + ", ".join(f"{k}={v!r}" for k, v in self.items()) + ")"

    @property
    def filters(self) -> tuple[int, int, int]:
        return (self.conv1_filters, self.conv2_filters, self.conv3_filters)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """`values` checked: exactly the six names, counts whole and at least 1, rates in [0, 1).

        Counts come back as int, rates as float rounded to 10 digits (0.15, never
        0.15000000000000002), whatever numeric type they arrived as.
        """
        if isinstance(values, Hyperparameters):
            return values
        given, expected = set(values), set(NAMES)
        if given != expected:
            missing = ", ".join(sorted(expected - given)) or "none"
            unknown = ", ".join(sorted(given - expected)) or "none"
            raise ConfigError(
                f"hyperparameters of the `tuned` model must be exactly {', '.join(sorted(expected))}; "
                f"missing: {missing}; unknown: {unknown}"
            )
        return cls(**{name: check_value(name, values[name]) for name in NAMES})


NAMES: tuple[str, ...] = tuple(f.name for f in fields(Hyperparameters))
KIND: dict[str, str] = {f.name: f.metadata["kind"] for f in fields(Hyperparameters)}
LABEL: dict[str, str] = {f.name: f.metadata["label"] for f in fields(Hyperparameters)}
COUNT_NAMES = tuple(n for n in NAMES if KIND[n] == COUNT)
RATE_NAMES = tuple(n for n in NAMES if KIND[n] == RATE)


def check_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"hyperparameter `{name}` must be a number, got {value!r}")
    if KIND[name] == COUNT:
        if value < 1 or value != int(value):
            raise ConfigError(f"hyperparameter `{name}` must be a whole number of at least 1, got {value!r}")
        return int(value)
    if not 0 <= value < 1:
        raise ConfigError(f"hyperparameter `{name}` must be a rate within [0, 1), got {value!r}")
    return round(float(value), 10)


MODEL3 = Hyperparameters(32, 64, 128, 64, 0.25, 0.3)
PAPER_BEST = Hyperparameters(16, 96, 192, 96, 0.05, 0.4)
