"""The package's layout keeps its rules: light layers load no heavy library, imports point one way."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import chimuf
from tests import import_graph

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


def test_no_import_runs_back_up_a_layer_and_none_goes_round_a_loop():
    edges = import_graph.graph()
    assert len(edges) > 50  # the walk found the modules
    assert import_graph.upward_edges(edges) == []
    assert import_graph.cycles(edges) == []


def test_the_graph_check_finds_an_arrow_back_up_and_a_loop(tmp_path):
    package = tmp_path / "chimuf"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("def f():\n    from chimuf.stages import b\n")
    (package / "stages").mkdir()
    (package / "stages" / "__init__.py").write_text("")
    (package / "stages" / "b.py").write_text("from chimuf.core import a\n")
    edges = import_graph.graph(package)
    assert import_graph.upward_edges(edges) == ["chimuf.core.a -> chimuf.stages.b"]
    assert import_graph.cycles(edges) == [["chimuf.core.a", "chimuf.stages.b"]]


def mapped_files(text: str) -> set[str]:
    """The files docs/layout.md's tree names, as paths under chimuf/ ("ml/fit.py"): a folder is a
    word ending in "/", its files are the `.py` words indented under it (two spaces a level)."""
    tree = text[text.index("```\nchimuf/") + 4:]
    tree = tree[:tree.index("```")]
    folders: list[tuple[int, str]] = []
    found = set()
    for line in tree.splitlines()[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        folders = [(d, name) for d, name in folders if d < depth]
        first = line.split()[0] if line.split() else ""
        if first.endswith("/"):
            folders.append((depth, first.rstrip("/")))
            continue
        prefix = "/".join(name for _, name in folders)
        for word in line.split():
            if word.endswith(".py") and word != "__init__.py":
                found.add(f"{prefix}/{word}" if prefix else word)
    return found


def test_every_module_is_in_the_layout_map():
    """docs/layout.md names every module where it is, so the map cannot fall behind the tree."""
    mapped = mapped_files((ROOT / "docs" / "layout.md").read_text(encoding="utf-8"))
    files = {path.relative_to(import_graph.PACKAGE).as_posix()
             for path in import_graph.module_files().values() if path.name != "__init__.py"}
    assert sorted(files - mapped) == []
    assert sorted(mapped - files) == []


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
