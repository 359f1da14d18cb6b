"""`chimuf compare RUN_A RUN_B`: why two runs' numbers differ, or that they do not.

What a user reaches for when their numbers do not match a colleague's: first every input a
number depends on (config, data, installed versions and lock, hardware and determinism), then
every headline number side by side with its interval, and whether the two values lie within
each other's intervals, then each run's verdicts (against chance, against the paper, the beyond
rows) as the run stored them, decided at its own confidence. It reads the two results.json files
only, like the report: no TensorFlow, no recomputation, no verdict decided again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chimuf.core.config import flatten
from chimuf.core.console import printable
from chimuf.core.headline import headline_numbers, number_of
from chimuf.core.results import EnvironmentInfo, Interval, Results, dumps
from chimuf.report import read_results

MISSING = "not recorded"


@dataclass
class Difference:
    key: str
    a: Any
    b: Any


@dataclass
class Section:
    """One group of inputs: what differs between the runs, and what the two share."""

    name: str  # "config", "data", "software", "hardware"
    differences: list[Difference]
    same: str  # what both runs share, in a few words ("" when everything differs)


@dataclass
class NumberRow:
    name: str  # "test accuracy", "F1 chihuahua", ...
    a: float | None
    b: float | None
    a_interval: Interval | None
    b_interval: Interval | None
    interval_kind: str  # "95% bootstrap" | "± 1 sd over folds" | "" (the number has none)
    difference: float | None  # b - a
    verdict: str  # "identical" | "within the intervals" | "outside the intervals" | "no interval" | "missing"


@dataclass
class Comparison:
    run_a: str
    run_b: str
    runs: list[Difference]  # run id, status, profile, seed, chimuf version, when
    sections: list[Section]
    numbers: list[NumberRow]
    identical: bool = False  # every input and every number the same
    verdicts: list[Difference] = field(default_factory=list)  # each run's stored verdict, by question
    notes: list[str] = field(default_factory=list)


def compare_runs(run_a: Path, run_b: Path) -> Comparison:
    """Compare the runs in two folders (or their results.json files)."""
    a, b = read_results(run_folder(run_a)), read_results(run_folder(run_b))
    sections = [config_section(a, b), data_section(a, b), software_section(a, b), hardware_section(a, b)]
    numbers = number_rows(a, b)
    verdicts = verdict_rows(a, b)
    identical = (all(not s.differences for s in sections)
                 and all(row.verdict == "identical" for row in numbers)
                 and all(d.a == d.b for d in verdicts))
    return Comparison(str(run_a), str(run_b), run_rows(a, b), sections, numbers, identical,
                      verdicts=verdicts)


def run_folder(path: Path) -> Path:
    return path.parent if path.name == "results.json" else path


# --- the inputs --------------------------------------------------------------------------------


def differ(pairs: list[tuple[str, Any, Any]]) -> list[Difference]:
    return [Difference(key, a, b) for key, a, b in pairs if a != b]


def run_rows(a: Results, b: Results) -> list[Difference]:
    """The runs' own facts, shown whether or not they differ."""
    return [Difference(key, getattr(a.run, key), getattr(b.run, key))
            for key in ("run_id", "status", "profile", "seed", "chimuf_version", "commit", "started_at")]


def config_section(a: Results, b: Results) -> Section:
    flat_a, flat_b = flatten(a.run.config), flatten(b.run.config)
    keys = sorted(set(flat_a) | set(flat_b))
    ignored = {"data.dir", "data.cache_dir"}  # where files are, not what they are (data digest below)
    found = differ([(k, flat_a.get(k, MISSING), flat_b.get(k, MISSING)) for k in keys if k not in ignored])
    return Section("config", found, "" if found else f"all {len(keys) - len(ignored)} settings")


def data_section(a: Results, b: Results) -> Section:
    def images(r: Results) -> int | str:
        return len(r.cache.paths) if r.cache else MISSING

    pairs = [("data digest", a.run.data_digest or MISSING, b.run.data_digest or MISSING),
             ("usable images", images(a), images(b)),
             ("split digest", a.split.digest if a.split else MISSING, b.split.digest if b.split else MISSING)]
    found = differ(pairs)
    shared = {key: value for key, value, other in pairs if value == other}
    same = ", ".join(
        words for key, words in (("data digest", f"data digest {short(str(shared.get('data digest')))}"),
                                 ("usable images", f"{shared.get('usable images')} images"),
                                 ("split digest", "the same split")) if key in shared)
    if a.run.data_dir != b.run.data_dir:
        same += f" (read from {a.run.data_dir} and {b.run.data_dir})"
    return Section("data", found, same)


def software_section(a: Results, b: Results) -> Section:
    ea, eb = a.run.environment, b.run.environment
    python = ("python", a.run.packages.get("python"), b.run.packages.get("python"))
    pairs: list[tuple[str, Any, Any]] = [python]
    if ea is None or eb is None:
        pairs += [(name, a.run.packages.get(name, MISSING), b.run.packages.get(name, MISSING))
                  for name in sorted(set(a.run.packages) | set(b.run.packages)) if name != "python"]
        pairs.append(("environment", recorded(ea), recorded(eb)))
        found = differ(pairs)
        return Section("software", found, "" if found else "the same versions of the main packages")
    pairs.append(("lock digest", lock_digest(ea), lock_digest(eb)))
    pairs.append(("installed as locked", as_locked(ea), as_locked(eb)))
    pairs += [(name, ea.packages.get(name, "not installed"), eb.packages.get(name, "not installed"))
              for name in sorted(set(ea.packages) | set(eb.packages))]
    found = differ(pairs)
    if not found:
        same = (f"lock {short(lock_digest(ea))}, the same {len(ea.packages)} installed versions "
                f"(digest {short(ea.packages_digest)})")
    else:
        same = f"{len(pairs) - len(found)} other versions and facts"
    return Section("software", found, same)


def hardware_section(a: Results, b: Results) -> Section:
    ea, eb = a.run.environment, b.run.environment
    if ea is None or eb is None:
        found = differ([("hardware", a.run.hardware, b.run.hardware),
                        ("environment", recorded(ea), recorded(eb))])
        return Section("hardware", found, "" if found else a.run.hardware)
    found = differ([
        ("cpu", ea.cpu, eb.cpu),
        ("cpu instruction sets", ", ".join(ea.cpu_features), ", ".join(eb.cpu_features)),
        ("oneDNN kernels for", ea.onednn_isa or "not known", eb.onednn_isa or "not known"),
        ("oneDNN settings", settings(ea), settings(eb)),
        ("gpus", ", ".join(ea.gpus) or "none", ", ".join(eb.gpus) or "none"),
        ("op determinism", on_off(ea.op_determinism), on_off(eb.op_determinism)),
        ("hardware", a.run.hardware, b.run.hardware),
    ])
    same = "" if found else (f"{ea.cpu} ({', '.join(ea.cpu_features) or 'no AVX2'}), "
                             f"{', '.join(ea.gpus) or 'no GPU'}, op determinism {on_off(ea.op_determinism)}")
    return Section("hardware", found, same)


def recorded(env: EnvironmentInfo | None) -> str:
    return "recorded" if env is not None else MISSING


def lock_digest(env: EnvironmentInfo) -> str:
    return env.lock.digest if env.lock else "no lock"


def as_locked(env: EnvironmentInfo) -> str:
    if env.lock is None:
        return "no lock"
    return "yes" if not env.lock.mismatches else f"no: {'; '.join(env.lock.mismatches)}"


def settings(env: EnvironmentInfo) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.onednn_settings.items()) or "defaults"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def short(digest: str) -> str:
    return digest[:12] if digest else MISSING


# --- the numbers -------------------------------------------------------------------------------


def number_rows(a: Results, b: Results) -> list[NumberRow]:
    """Every headline number of the two runs (chimuf.core.headline), in the report's order."""
    na, nb = headline_numbers(a), headline_numbers(b)
    keys = [n.key for n in na] + [n.key for n in nb if number_of(na, n.key) is None]
    rows: list[NumberRow] = []
    for key in keys:
        x, y = number_of(na, key), number_of(nb, key)
        shown = x or y
        rows.append(row(shown.label, x and x.value, y and y.value, x and x.interval, y and y.interval,
                        shown.interval_kind))
    return [r for r in rows if r.a is not None or r.b is not None]  # neither run measured it: no row


def verdict_rows(a: Results, b: Results) -> list[Difference]:
    """Each question a run answered with a verdict, and the two runs' stored words (each decided
    at its own run's confidence, which the first row shows)."""
    def confidence(r: Results) -> str:
        return f"{r.evaluate.confidence:g}" if r.evaluate else MISSING

    questions: dict[str, list[str]] = {"confidence": [confidence(a), confidence(b)]}
    for i, r in enumerate((a, b)):
        for question, words in stored_verdicts(r).items():
            questions.setdefault(question, [MISSING, MISSING])[i] = words
    return [Difference(question, words[0], words[1]) for question, words in questions.items()]


def stored_verdicts(r: Results) -> dict[str, str]:
    """The verdicts one run stored, by the question they answer."""
    out: dict[str, str] = {}
    e = r.evaluate
    if e is not None and e.chance is not None:
        out["test accuracy against chance"] = e.chance.verdict
    for c in (e.comparisons if e else []):
        out[f"{c.topic} on {c.split}: {c.model_a} vs {c.model_b}"] = c.verdict
    for beyond in (r.beyond.rows if r.beyond else []):
        if beyond.chance is not None:
            out[f"beyond {beyond.name} against chance"] = beyond.chance.verdict
        if beyond.versus_final is not None:
            out[f"beyond {beyond.name} vs final"] = beyond.versus_final.verdict
    return out


def row(name: str, a: float | None, b: float | None, ia: Interval | None = None,
        ib: Interval | None = None, kind: str = "") -> NumberRow:
    a, b = number(a), number(b)
    difference = b - a if a is not None and b is not None else None
    return NumberRow(name, a, b, ia or None, ib or None, kind if (ia or ib) else "", difference,
                     verdict(a, b, ia or None, ib or None))


def verdict(a: float | None, b: float | None, ia: Interval | None, ib: Interval | None) -> str:
    """Identical; each value inside the other run's interval; or not."""
    if a is None or b is None:
        return "missing"
    if a == b:
        return "identical"
    if ia is None or ib is None:
        return "no interval"
    inside = ib.low <= a <= ib.high and ia.low <= b <= ia.high
    return "within the intervals" if inside else "outside the intervals"


def number(value: Any) -> float | None:
    """A float, or None for a missing or NaN value (results.json writes NaN as null)."""
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


# --- showing -----------------------------------------------------------------------------------


def format_comparison(comparison: Comparison, as_json: bool = False) -> str:
    """The comparison as aligned text (inputs first, then numbers), or as one JSON object."""
    if as_json:
        return dumps(comparison)
    lines = [f"A: {comparison.run_a}", f"B: {comparison.run_b}", ""]
    lines += table(["", "A", "B"], [[d.key, text(d.a), text(d.b)] for d in comparison.runs])
    for section in comparison.sections:
        lines.append("")
        if not section.differences:
            lines.append(f"{section.name}: the same ({section.same})")
            continue
        lines.append(f"{section.name}: {len(section.differences)} difference(s)"
                     + (f"; the same: {section.same}" if section.same else ""))
        lines += table(["", "A", "B"], [[f"  {d.key}", text(d.a), text(d.b)] for d in section.differences])
    lines.append("")
    header = ["number", "A", "B", "B - A", "verdict"]
    lines += table(header, [[r.name, shown(r.a, r.a_interval), shown(r.b, r.b_interval),
                             f"{r.difference:+.4f}" if r.difference is not None else "",
                             r.verdict] for r in comparison.numbers])
    if comparison.verdicts:
        lines.append("")
        lines += table(["verdict (as each run decided it)", "A", "B"],
                       [[d.key, text(d.a), text(d.b)] for d in comparison.verdicts])
    kinds = sorted({r.interval_kind for r in comparison.numbers if r.interval_kind})
    lines.append("")
    lines.append(f"Intervals: {'; '.join(kinds) or 'none recorded'}. \"within the intervals\": each run's "
                 "value lies inside the other run's interval.")
    lines.append("Identical inputs and numbers." if comparison.identical else verdict_line(comparison))
    return "\n".join(printable(line) for line in lines)  # keys and names too


def verdict_line(comparison: Comparison) -> str:
    differing = [s.name for s in comparison.sections if s.differences]
    outside = [r.name for r in comparison.numbers if r.verdict == "outside the intervals"]
    inputs = f"inputs differ in {', '.join(differing)}" if differing else "the same inputs"
    numbers = (f"{len(outside)} number(s) outside the intervals: {', '.join(outside)}" if outside else
               "every number with an interval lies within the other run's interval")
    return f"{inputs[0].upper()}{inputs[1:]}; {numbers}."


def shown(value: float | None, interval: Interval | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.4f} [{interval.low:.4f}, {interval.high:.4f}]" if interval else f"{value:.4f}"


def text(value: Any) -> str:
    """A value from a results.json, which may come from anyone: no escape codes, newlines or bidi
    overrides reach the terminal (chimuf.core.console.printable)."""
    return MISSING if value is None else printable(str(value))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), *(line(r) for r in rows)]
