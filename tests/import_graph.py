"""chimuf's import graph, read from the source (ast; nothing is imported or run), and its rules.

    python -m tests.import_graph          # the layers, every edge that runs back up, every cycle

The package's layers, lowest first: a module may import from its own layer and those below, never
from a layer above (an arrow running back up), and no two modules may import each other, directly
or around a loop. Function-level imports count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chimuf"

# Lowest first. A module belongs to the first layer whose prefix it starts with.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("chimuf.version", "chimuf.core"),
    ("chimuf.stats",),
    ("chimuf.data",),
    ("chimuf.report",),
    ("chimuf.ml",),
    ("chimuf.tuning",),
    ("chimuf.stages",),
    ("chimuf.tools",),
    ("chimuf.study",),
    ("chimuf.api", "chimuf.cli", "chimuf.__main__", "chimuf"),
)


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            base = ".".join(p for p in (stem, node.module or "") if p)
            subs = [f"{base}.{alias.name}" for alias in node.names]
            # `from pkg import sub` depends on pkg.sub alone; `from pkg import name` on pkg
            targets = [t for t in subs if t in known] + ([base] if any(t not in known for t in subs) else [])
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(package)
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer of tests/import_graph.py's LAYERS")


def upward_edges(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer into a higher one (the package's own __init__ excepted:
    it names the API lazily)."""
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if a != "chimuf" and layer_of(b) > layer_of(a)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    edges = graph()
    problems = [f"up: {e}" for e in upward_edges(edges)]
    problems += [f"cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    for line in problems:
        print(line)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} edges, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
