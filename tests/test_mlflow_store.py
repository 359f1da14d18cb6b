"""Where chimuf's MLflow logging goes: a local folder is an SQLite store; the `mlflow ui` line it
prints opens that store as written (checked by starting the UI on loopback and fetching a page)."""

from __future__ import annotations

import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chimuf.core.config import TrackingConfig
from chimuf.core.console import Console
from chimuf.tools.tracking import artifact_location, local_folder, mlflow_calls, tracking_uri, ui_command


def test_a_local_folder_becomes_an_sqlite_store_inside_it(tmp_path):
    store = (tmp_path / "mlruns" / "mlflow.db").as_posix()
    assert tracking_uri(str(tmp_path / "mlruns")) == f"sqlite:///{store}"
    assert artifact_location(str(tmp_path / "mlruns")) == (tmp_path / "mlruns" / "artifacts").as_uri()


def test_a_relative_folder_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_folder("mlruns") == tmp_path.resolve() / "mlruns"


@pytest.mark.parametrize("uri", ["sqlite:///x/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example",
                                 "file:/tmp/mlruns", "postgresql://u@h/db", "databricks"])
def test_uris_with_a_scheme_are_given_to_mlflow_as_they_are(uri):
    assert tracking_uri(uri) == uri and artifact_location(uri) is None


def test_a_windows_drive_is_a_local_folder_not_a_scheme():
    folder = local_folder(r"C:\Users\me\mlruns")
    assert folder is not None and tracking_uri(r"C:\Users\me\mlruns").startswith("sqlite:///")


def test_the_ui_line_names_the_store_and_allows_a_file_store_only_where_one_is_used():
    assert ui_command("sqlite:////home/me/mlruns/mlflow.db") == \
        "mlflow ui --backend-store-uri sqlite:////home/me/mlruns/mlflow.db"
    assert ui_command("file:/tmp/mlruns").startswith("MLFLOW_ALLOW_FILE_STORE=true mlflow ui")
    assert ui_command("sqlite:////a b/mlflow.db").endswith("'sqlite:////a b/mlflow.db'")  # quoted
    assert ui_command("http://host:5000") == "open http://host:5000 in a browser"


def test_only_a_file_store_gets_mlflows_permission_for_file_stores(monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with mlflow_calls("sqlite:////tmp/x.db"):
        assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    with mlflow_calls("file:/tmp/mlruns"):
        assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(server: subprocess.Popen[bytes]) -> None:
    """The server and its workers: TERM, then KILL if they linger."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="stops the server's process group (POSIX)")
def test_the_printed_mlflow_ui_line_serves_the_logged_run(tmp_path):
    """Log a run to a local folder, take the `mlflow ui ...` line chimuf prints, run it as written
    (on loopback, a free port), and find the run through the UI's server."""
    pytest.importorskip("mlflow")
    from chimuf.report import read_results
    from chimuf.tools import tracking
    from tests.report_fixture import complete_results, write_run

    run_dir = tmp_path / "run"
    write_run(run_dir, complete_results(run_dir))
    stream = io.StringIO()
    cfg = TrackingConfig(mlflow_uri=str(tmp_path / "mlruns"), mlflow_experiment="ui-check")
    run_id = tracking.log_run(read_results(run_dir), run_dir, cfg, Console(stream, live=False))
    (line,) = [t.split("`")[1] for t in stream.getvalue().splitlines() if "mlflow ui" in t]
    args = shlex.split(line)
    assert args[:2] == ["mlflow", "ui"]
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow), *args[1:], "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                              start_new_session=True)  # its worker processes go with it
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}"
        for _ in range(480):  # MLflow's server starts in seconds alone, minutes on a busy machine
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    body = answer.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"`{line}` served nothing on port {port} within four minutes")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        stop_group(server)
    assert run_id in body and '"status": "FINISHED"' in body.replace('":"', '": "')
