"""chimuf's version, and the Pythons it runs on, in a module of its own so that importing it pulls
in nothing else (noxfile.py loads it by path, before any environment exists).

The one place the version is written: pyproject.toml reads it from here (`dynamic`), and every
stage of a run records it (chimuf.core.environment.provenance).
"""

from __future__ import annotations

import sys

__version__ = "0.2.0"

# The Pythons TensorFlow 2.21 ships wheels for (pyproject.toml's requires-python says the same;
# tests/test_python_version.py checks that they agree).
PYTHONS = ((3, 11), (3, 13))


def python_refusal(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> str:
    """"" where chimuf runs on `version`; else the one line that says why not and what to do."""
    low, high = PYTHONS
    if low <= tuple(version[:2]) <= high:
        return ""
    said = ".".join(str(part) for part in version)
    return (f"chimuf needs Python {low[0]}.{low[1]} to {high[0]}.{high[1]} (TensorFlow 2.21 has wheels "
            f"for those only), this is Python {said}: install one of those, e.g. `uv python install "
            f"{high[0]}.{high[1]}`, and make chimuf's environment with it")
