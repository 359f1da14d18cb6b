"""Python 3.11-3.13 only (TensorFlow 2.21's wheels): one line of refusal elsewhere, from chimuf
and from nox, and the same range in pyproject.toml."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import tomllib

from chimuf import cli
from chimuf.version import PYTHONS, python_refusal

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 7), (3, 13, 1)])
def test_pythons_with_tensorflow_wheels_are_accepted(version):
    assert python_refusal(version) == ""


@pytest.mark.parametrize("version", [(3, 10, 14), (3, 14, 0), (3, 15, 0)])
def test_other_pythons_are_refused_in_one_line_saying_what_to_do(version):
    message = python_refusal(version)
    said = ".".join(map(str, version))
    assert f"this is Python {said}" in message and "3.11 to 3.13" in message
    assert "uv python install 3.13" in message and "\n" not in message


def test_pyproject_requires_the_same_pythons():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    (low, high) = PYTHONS
    assert requires.replace(" ", "") == f">={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}"


def test_the_cli_refuses_another_python_before_anything_else(monkeypatch, capsys):
    monkeypatch.setattr(cli, "python_refusal", lambda: python_refusal((3, 14, 0)))
    assert cli.main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chimuf: error: chimuf needs Python 3.11 to 3.13") and err.count("\n") == 1


@pytest.fixture(scope="module")
def noxfile():
    """noxfile.py, loaded once (each load registers its sessions with nox again)."""
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("chimuf_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nox_refuses_another_python_with_chimufs_own_line(noxfile):
    assert noxfile.python_refusal((3, 14, 0)) == python_refusal((3, 14, 0))
    assert noxfile.python_refusal(tuple(sys.version_info[:3])) == ""


def test_chimuf_gpu_selects_the_gpu_extra_for_nox(monkeypatch, noxfile):
    monkeypatch.setenv("CHIMUF_GPU", "1")
    assert noxfile.gpu_extras() == ("gpu",)
    monkeypatch.setenv("CHIMUF_GPU", "0")
    assert noxfile.gpu_extras() == ()
    monkeypatch.delenv("CHIMUF_GPU")
    assert noxfile.gpu_extras() == ()


def test_the_gpu_extra_is_tensorflows_cuda_build_at_the_locked_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu,) = project["optional-dependencies"]["gpu"]
    tensorflow = next(d for d in project["dependencies"] if d.startswith("tensorflow"))
    assert gpu.startswith("tensorflow[and-cuda]" + tensorflow.removeprefix("tensorflow"))
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    names = {p["name"] for p in lock["package"]}
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= names  # locked like the rest
