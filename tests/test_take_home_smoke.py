"""A study with the six trainings, the search and the k-fold switched off, and a user's own
architecture among the candidates, runs to a complete report; the model it takes home is the one
its rule chose, with the threshold and TFLite file beside it.

Small on purpose (16 images a class, 32 px, one epoch): it checks the wiring, not the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chimuf.core.errors import ModelError
from chimuf.ml.modelfiles import modelfile
from chimuf.stages.choose import pick
from tests.conftest import SHARED_DATA, make_dataset
from tests.test_study_smoke import environment

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[data]
image_size = 32
max_per_class = 16
[train]
enabled = false
epochs = 1
start_from_epoch = 0
batch_size = 8
[tune]
enabled = false
[kfold]
enabled = false
[modern]
epochs = 1
warmup_epochs = 0
batch_size = 8
widths = [4, 8]
[explain]
max_images = 1
activation_images = 1
[report]
formats = ["html"]
[candidates]
builders = ["tests.own_builder:tiny"]
"""


@pytest.fixture(scope="module")
def lean_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lean")
    data = SHARED_DATA if SHARED_DATA.is_dir() else make_dataset(root / "generated", per_class=16, size=48)
    config = root / "lean.toml"
    config.write_text(CONFIG, encoding="utf-8")
    out = root / "run"
    done = subprocess.run([sys.executable, "-m", "chimuf", "study", "--profile", "smoke", "--config",
                           str(config), "--data", str(data), "--out", str(out)],
                          env={**environment(root / "cache"), "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_switched_off_stages_leave_a_complete_report_with_one_line_each(lean_run: Path) -> None:
    results = json.loads((lean_run / "results.json").read_text())
    status = {fact["name"]: fact["status"] for fact in results["run"]["stages"]}
    assert {status[name] for name in ("train", "tune", "kfold", "labels")} == {"off"}
    assert results["run"]["status"] == "finished" and results["final"] and results["choose"]
    assert results["final"]["hyperparameters"]["conv2_filters"] == 96  # the paper's, without a search
    markdown = (lean_run / "report" / "index.qmd").read_text(encoding="utf-8")
    assert markdown.count("Switched off in this run") == 5  # architectures, trainings, tuning, k-fold, labels
    assert "# The model to take home" in markdown and (lean_run / "report" / "index.html").is_file()


def test_the_exported_model_is_the_one_the_rule_chose(lean_run: Path) -> None:
    from chimuf.core.results import load_results

    results = load_results((lean_run / "results.json").read_text())
    chosen = pick(results.beyond.rows)
    assert results.choose.chosen == chosen.name
    exported = lean_run / results.export.model_path
    assert exported.read_bytes() == (lean_run / results.choose.model_path).read_bytes()
    sidecar = modelfile.read_sidecar(exported)
    assert sidecar.threshold == results.choose.threshold == results.export.threshold
    exports = [(e.format, e.quantization) for e in results.export.exports]
    assert exports == [("tflite", ""), ("tflite", "int8")]  # the float file and its int8 copy
    assert (lean_run / results.export.exports[0].path).is_file()


def test_a_users_own_architecture_is_trained_judged_and_loads_again_by_digest(lean_run: Path) -> None:
    from chimuf.core.results import load_results, recorded_model_digests

    results = load_results((lean_run / "results.json").read_text())
    (own,) = results.own.trainings
    assert own.name == "tiny" and own.epochs_run == 1
    assert "tiny" in [row.name for row in results.beyond.rows]
    assert any(c.name == "tiny" and c.validation_source == "validation" for c in results.choose.candidates)
    path = lean_run / own.model_path
    modelfile.VOUCHED.clear()
    with pytest.raises(ModelError, match="AdaptiveAveragePooling2D"):
        modelfile.load_model(path)  # its layers cannot be counted: an outside file would be refused
    modelfile.vouch(recorded_model_digests(results))
    assert modelfile.load_model(path).count_params() == own.params
    modelfile.VOUCHED.clear()
