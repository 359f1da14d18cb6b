"""`chimuf compare`: the inputs that differ between two runs, then every headline number with its
interval and whether the two lie within each other's intervals. Hand-made runs (report_fixture)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from chimuf.cli import main
from chimuf.core.results import EnvironmentInfo, Interval, LockInfo
from chimuf.tools.compare import compare_runs, format_comparison, verdict
from tests.report_fixture import complete_results, write_run


def environment(**changes: object) -> EnvironmentInfo:
    base = EnvironmentInfo(
        python="3.11.7", packages={"keras": "3.15.1", "tensorflow": "2.21.0"}, packages_digest="d" * 64,
        lock=LockInfo("/src/uv.lock", "a" * 64, []), cpu="Test CPU", cpu_features=["AVX2", "AVX-512"],
        onednn_isa="Intel AVX-512", onednn_settings={}, gpus=[], op_determinism=False,
    )
    return dataclasses.replace(base, **changes)


def two_runs(tmp_path: Path, change_b) -> tuple[Path, Path]:
    a, b = complete_results(tmp_path / "a"), complete_results(tmp_path / "b")
    a.run.environment = environment()
    b.run.environment = environment()
    change_b(b)
    return write_run(tmp_path / "a", a), write_run(tmp_path / "b", b)


def test_the_same_run_twice_is_identical(tmp_path):
    a, b = two_runs(tmp_path, lambda b: None)
    comparison = compare_runs(a, b)
    assert comparison.identical
    assert all(not s.differences for s in comparison.sections)
    assert "Identical inputs and numbers." in format_comparison(comparison)


def test_inputs_that_differ_are_named_section_by_section(tmp_path):
    def change(b):
        b.run.config["seed"] = 7
        b.run.config["train"]["epochs"] = 3
        b.run.config["data"]["dir"] = "/elsewhere"  # where the data is, not what: not a difference
        b.run.environment = environment(packages={"keras": "3.16.0", "tensorflow": "2.21.0"},
                                        lock=LockInfo("/src/uv.lock", "b" * 64, []),
                                        cpu_features=["AVX2"], onednn_isa="Intel AVX2", op_determinism=True)

    a, b = two_runs(tmp_path, change)
    sections = {s.name: {d.key: (d.a, d.b) for d in s.differences} for s in compare_runs(a, b).sections}
    assert sections["config"] == {"seed": (42, 7), "train.epochs": (8, 3)}
    assert sections["data"] == {}
    assert sections["software"]["keras"] == ("3.15.1", "3.16.0")
    assert sections["software"]["lock digest"] == ("a" * 64, "b" * 64)
    assert sections["hardware"]["cpu instruction sets"] == ("AVX2, AVX-512", "AVX2")
    assert sections["hardware"]["oneDNN kernels for"] == ("Intel AVX-512", "Intel AVX2")
    assert sections["hardware"]["op determinism"] == ("off", "on")


def test_numbers_inside_each_others_intervals_are_within_outside_are_not(tmp_path):
    def change(b):
        b.evaluate.accuracy = b.evaluate.accuracy - 0.005  # still inside A's interval
        b.evaluate.roc_auc = 0.90  # far outside
        b.kfold.mean_accuracy = 0.90

    a, b = two_runs(tmp_path, change)
    rows = {r.name: r for r in compare_runs(a, b).numbers}
    assert rows["test accuracy"].verdict == "within the intervals"
    assert rows["test accuracy"].interval_kind == "95% bootstrap"
    assert rows["ROC AUC"].verdict == "outside the intervals"
    assert rows["k-fold mean accuracy"].interval_kind == "± 1 sd over folds"
    assert rows["k-fold mean accuracy"].verdict == "outside the intervals"
    assert rows["macro F1"].verdict == "identical"
    assert round(rows["ROC AUC"].difference, 4) == round(0.90 - 0.9871, 4)


def test_verdict_needs_both_values_inside_the_other_interval():
    wide, narrow = Interval(0.80, 0.90), Interval(0.855, 0.865)
    assert verdict(0.85, 0.86, wide, wide) == "within the intervals"
    assert verdict(0.85, 0.86, wide, narrow) == "outside the intervals"  # 0.85 is outside B's interval
    assert verdict(0.85, 0.86, None, None) == "no interval"
    assert verdict(None, 0.86, None, None) == "missing"


def test_a_run_without_environment_facts_says_not_recorded(tmp_path):
    a, b = two_runs(tmp_path, lambda b: setattr(b.run, "environment", None))
    software = next(s for s in compare_runs(a, b).sections if s.name == "software")
    assert {d.key: d.b for d in software.differences}["environment"] == "not recorded"


def test_compare_command_prints_the_table_and_json(tmp_path, capsys):
    a, b = two_runs(tmp_path, lambda b: setattr(b.evaluate, "roc_auc", 0.9))
    assert main(["compare", str(a), str(b / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "ROC AUC" in out and "outside the intervals" in out and "0.9871 [0.9812, 0.9921]" in out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is False


def test_compare_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    a, _b = two_runs(tmp_path, lambda b: None)
    assert main(["compare", str(a), str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_loads_no_tensorflow(tmp_path):
    a, b = two_runs(tmp_path, lambda b: None)
    code = ("import sys; from chimuf.cli import main; main(['-q', 'compare', sys.argv[1], sys.argv[2]]); "
            "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                          check=True)
    assert "LOADED []" in done.stdout
