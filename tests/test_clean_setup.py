"""The README's set-up lines on a stock Debian/Ubuntu, run as written in a clean environment
(tests/clean_setup.sh says how clean). Minutes and a TensorFlow download: only with
CHIMUF_SETUP_CHECK=1, and only where the system Python is Debian's (PEP 668)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chihuahua-muffin"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CHIMUF_SETUP_CHECK") != "1", reason="CHIMUF_SETUP_CHECK=1 (minutes)")
@pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages").is_dir(), reason="Debian's system Python")
def test_the_debian_setup_lines_run_the_study_and_the_report_as_written(tmp_path):
    data = os.environ.get("CHIMUF_DATA") or str(DATA)
    script = ROOT / "tests" / "clean_setup.sh"
    done = subprocess.run(["sh", str(script), str(ROOT), data, str(tmp_path / "clean")],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "refused: externally-managed-environment" in done.stdout
    assert "report: " in done.stdout and "uvx nox: ok" in done.stdout
