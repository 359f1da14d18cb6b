"""The package's layout keeps its rules: light layers load no heavy library, imports point one way."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import chimuf

ROOT = Path(__file__).resolve().parents[1]
IMPORT_GRAPH = ROOT.parent / "shared" / "tools" / "import_graph.py"
HEAVY = ("tensorflow", "keras", "keras_tuner", "matplotlib", "tf_keras_vis")
LIGHT_PACKAGES = ("chimuf.core", "chimuf.data", "chimuf.stats", "chimuf.report")


def modules_of(package: str) -> list[str]:
    """`package` and every module below it."""
    module = __import__(package, fromlist=["_"])
    return [package, *(info.name for info in pkgutil.walk_packages(module.__path__, f"{package}."))]


def heavy_after_importing(names: list[str]) -> list[str]:
    """The heavy libraries a fresh interpreter holds after importing `names`."""
    code = (f"import sys, json\nfor name in {names!r}:\n    __import__(name)\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


def test_chimuf_and_its_light_layers_load_no_tensorflow_keras_or_matplotlib():
    names = ["chimuf", *(name for package in LIGHT_PACKAGES for name in modules_of(package))]
    assert len(names) > 10  # the walk found the modules
    assert heavy_after_importing(names) == []


def test_core_loads_no_numpy_either():
    names = modules_of("chimuf.core")
    code = (f"import sys\nfor name in {names!r}:\n    __import__(name)\n"
            "print('numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "False"


def test_every_sub_package_has_a_docstring_that_says_what_it_holds():
    for info in pkgutil.iter_modules(chimuf.__path__):
        if info.ispkg:
            module = __import__(f"chimuf.{info.name}", fromlist=["_"])
            assert (module.__doc__ or "").strip(), f"chimuf.{info.name} has no docstring"


@pytest.mark.skipif(not IMPORT_GRAPH.is_file(), reason="../shared/tools/import_graph.py is not here")
def test_import_graph_has_no_cycle_and_no_forbidden_edge():
    forbid = ["chimuf.report:tensorflow", "chimuf.report:keras", "chimuf.core:numpy",
              "chimuf.core:tensorflow", "chimuf.data:tensorflow", "chimuf.data:keras",
              "chimuf.stats:tensorflow", "chimuf.stats:keras"]
    flags = [arg for rule in forbid for arg in ("--forbid", rule)]
    args = [sys.executable, str(IMPORT_GRAPH), "chimuf", *flags]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problems" in done.stdout
