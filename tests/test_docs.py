"""The README and docs/ cannot drift from the program: every `chimuf` command line they show parses
with chimuf's own parser (its subcommand and every flag exist), every `nox -s` session exists,
every setting they name (`section.key`) is a setting, every example config loads, every Python
block compiles."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

from chimuf.cli import build_parser
from chimuf.core.config import StudyConfig, as_dict, flatten, load_config
from chimuf.core.results import ANALYSIS_STAGES, Results

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def command_lines(text: str) -> list[str]:
    """Every `chimuf ...` and `nox -s ...` line: in fenced blocks (one per line, comments cut) and
    inline in the prose."""
    found = []
    for _language, body in blocks(text):
        for line in body.replace("\\\n", " ").splitlines():  # continued lines joined
            line = line.split(" # ")[0].split("  #")[0].strip().removeprefix("$ ")
            found.append(line)
    prose = FENCE.sub("", text)
    found += [m.group(1) for m in INLINE.finditer(prose)]
    return [line for line in found if line.startswith(("chimuf ", "nox -s", "CHIMUF_GPU=1 nox"))]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def nox_sessions() -> set[str]:
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and any("session" in ast.unparse(d) for d in node.decorator_list)}


def check_chimuf_line(line: str) -> str:
    """"" when the line is a command chimuf's parser knows, else what is wrong."""
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))
    commands = subparsers(build_parser())
    if len(words) > 1 and re.fullmatch(r"[A-Z]+", words[1]):  # `chimuf COMMAND --help`
        return ""
    if len(words) < 2 or words[1] not in commands:
        return f"`{line}`: no command `{words[1] if len(words) > 1 else ''}`"
    known = option_strings(commands[words[1]])
    unknown = [w.split("=")[0] for w in words[2:] if w.startswith("--") and w.split("=")[0] not in known]
    if unknown:
        return f"`{line}`: {words[1]} has no option {', '.join(unknown)}"
    placeholder = any(re.fullmatch(r"[A-Z][A-Z0-9_]*", w) for w in words[2:])  # `--profile P`
    if len(words) > 2 and not placeholder and not any(mark in line for mark in "[|") and "..." not in line:
        try:
            build_parser().parse_args(words[1:])
        except SystemExit:
            return f"`{line}`: does not parse"
    return ""


def check_nox_line(line: str) -> str:
    words = line.split()
    names = words[words.index("-s") + 1].split(",") if "-s" in words else []
    missing = [n for n in names if n not in nox_sessions()]
    return f"`{line}`: no nox session {', '.join(missing)}" if missing else ""


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_line_in_the_docs_is_one_chimuf_and_nox_know(doc):
    problems = []
    for line in command_lines(doc.read_text(encoding="utf-8")):
        problems.append(check_chimuf_line(line) if line.startswith("chimuf") else check_nox_line(line))
    assert [p for p in problems if p] == []


SETTINGS = set(flatten(as_dict(StudyConfig())))
SECTIONS = {key.split(".")[0] for key in SETTINGS}


def result_fields() -> set[str]:
    """`stage.field` of every results.json outcome (`audit.test_duplicates`): docs name those too."""
    hints = typing.get_type_hints(Results)
    out = set()
    for stage in ANALYSIS_STAGES:
        outcome = next(a for a in typing.get_args(hints[stage]) if a is not type(None))
        out |= {f"{stage}.{f.name}" for f in dataclasses.fields(outcome)}
    return out
# results.md names results.json's fields (audit.data_dir ...) and layout.md modules, not settings
ABOUT_SETTINGS = [doc for doc in DOCS if doc.name not in ("results.md", "layout.md")]


@pytest.mark.parametrize("doc", ABOUT_SETTINGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_setting_the_docs_name_is_a_setting(doc):
    named = set()
    for match in INLINE.finditer(doc.read_text(encoding="utf-8")):
        key = re.match(r"^([a-z_]+)\.([a-z_0-9]+)(\s*=.*)?$", match.group(1))
        if key and key.group(1) in SECTIONS:
            named.add(f"{key.group(1)}.{key.group(2)}")
    assert sorted(named - SETTINGS - result_fields()) == []


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_loads(example):
    load_config(example)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_block_in_the_docs_compiles(doc):
    for language, body in blocks(doc.read_text(encoding="utf-8")):
        if language == "python":
            compile(body, str(doc), "exec")


def test_the_checker_catches_a_flag_that_does_not_exist():
    assert "has no option --flip" in check_chimuf_line("chimuf predict MODEL.keras a.jpg --flip")
    assert check_chimuf_line("chimuf predict MODEL.keras a.jpg --tta") == ""
    assert "no nox session" in check_nox_line("nox -s studdy")
