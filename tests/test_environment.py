"""The facts a run records beside its numbers: installed versions and the lock, the CPU's
instruction sets, oneDNN's choice of kernels, op determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from chimuf.core import environment
from chimuf.core.config import load_config

CPUINFO = """processor	: 0
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
processor	: 1
"""

LOCK = """version = 1
requires-python = ">=3.11"

[[package]]
name = "keras"
version = "3.15.1"

[[package]]
name = "numpy"
version = "2.4.6"

[[package]]
name = "numpy"
version = "2.5.5"
"""


def test_cpu_instruction_sets_are_named_from_the_cpuinfo_flags():
    flags = environment.cpu_flags(CPUINFO)
    assert environment.cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    assert environment.cpu_features(flags) == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX",
                                               "AMX-BF16", "AMX-INT8"]
    assert environment.cpu_features(environment.cpu_flags("flags : sse2 avx avx2\n")) == ["AVX2"]


def test_lock_info_has_the_digest_and_every_version_the_lock_does_not_pin(tmp_path):
    lock = tmp_path / "uv.lock"
    lock.write_text(LOCK)
    installed = {"keras": "3.16.0", "numpy": "2.5.5", "extra-thing": "1.0"}
    info = environment.lock_info(lock, installed)
    assert info.digest == hashlib.sha256(LOCK.encode()).hexdigest()
    assert info.mismatches == ["keras 3.16.0: the lock pins 3.15.1", "extra-thing 1.0: not in the lock"]
    assert environment.lock_info(lock, {"numpy": "2.4.6", "keras": "3.15.1"}).mismatches == []
    assert environment.lock_info(None, installed) is None


def test_installed_dependencies_are_chimufs_closure_without_its_extras():
    packages = environment.installed_dependencies()
    assert {"tensorflow", "keras", "numpy", "protobuf", "ml-dtypes"} <= set(packages)  # direct and not
    assert "chimuf" not in packages and "pytest" not in packages  # pytest comes with the dev extra


def test_the_checkouts_lock_pins_this_environment_exactly():
    """The tests run in the environment `nox -s tests` installs from uv.lock: nothing differs."""
    lock = environment.find_lock()
    if lock is None:
        pytest.skip("not a checkout: no uv.lock beside chimuf")
    assert environment.lock_info(lock, environment.installed_dependencies()).mismatches == []


def test_deterministic_defaults_to_off():
    assert load_config().train.deterministic is False
    assert load_config(overrides={"train": {"deterministic": True}}).train.deterministic is True


@pytest.mark.slow
def test_train_deterministic_turns_on_tensorflows_op_determinism():
    code = ("from chimuf.ml import machine; import json\n"
            "before = machine.determinism_enabled(); machine.enable_determinism(True)\n"
            "print(json.dumps([before, machine.determinism_enabled()]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True]


@pytest.mark.slow
def test_onednn_says_which_instruction_set_it_dispatches_to(tmp_path):
    from chimuf.ml import machine

    target = machine.start_onednn_probe(tmp_path)
    answer = machine.onednn_isa(target, wait_s=300)
    assert answer, "the probe gave no answer"
    assert machine.start_onednn_probe(tmp_path) == target and target.is_file()  # asked once, then cached
    if "avx2" in environment.cpu_flags(environment.read_cpuinfo()):
        assert "AVX" in answer


def test_the_reports_run_facts_show_lock_isa_gpu_determinism_and_every_version(tmp_path):
    from chimuf.core.results import EnvironmentInfo, LockInfo
    from chimuf.report.markdown import render_markdown
    from tests.report_fixture import complete_results

    results = complete_results(tmp_path)
    results.run.environment = EnvironmentInfo(
        python="3.11.7", packages={"keras": "3.15.1", "ml-dtypes": "0.7.0"}, packages_digest="e" * 64,
        lock=LockInfo("/src/uv.lock", "a" * 64, ["keras 3.15.1: the lock pins 3.14.1"]), cpu="Test CPU",
        cpu_features=["AVX2", "AMX"], onednn_isa="Intel AMX with bfloat16", onednn_settings={},
        gpus=[], op_determinism=True, precision="mixed_bfloat16",
        precision_reason="auto: the CPU computes bfloat16 natively (amx_bf16)",
    )
    text = render_markdown(results, {})
    assert r"| Training precision | mixed\_bfloat16\: auto\: the CPU computes bfloat16 natively" in text
    assert "a" * 64 + r"\; differs in keras 3.15.1\: the lock pins 3.14.1" in text
    assert r"| CPU instruction sets | AVX2\, AMX |" in text
    assert "| oneDNN kernels for | Intel AMX with bfloat16 |" in text
    assert "| TensorFlow op determinism | on |" in text
    assert r"keras 3.15.1\, ml\-dtypes 0.7.0" in text
