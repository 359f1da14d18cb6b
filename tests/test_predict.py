"""`chimuf predict`: bad files are reported by name and reason, the others still predicted."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from chimuf.core.config import AuditConfig
from chimuf.core.console import Console
from chimuf.core.errors import ConfigError
from chimuf.data.imagefile import load_rgb, model_array
from chimuf.ml.modelfiles import modelfile
from chimuf.tools import predict
from tests.conftest import make_image


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import keras

    from chimuf.ml.architectures.models import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_model("model1", 24).save(path)
    modelfile.write_classes(path, ["chihuahua", "muffin"])
    return path


@pytest.fixture
def files(tmp_path):
    good = [make_image(tmp_path / f"photo{i}.png", size=40, seed=i) for i in range(3)]
    jpeg = make_image(tmp_path / "big.jpg", size=128, fmt="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    return [good[0], truncated, good[1], text, good[2], tmp_path / "missing.png"]


def test_bad_files_get_their_reason_and_the_others_are_predicted(model_path, files):
    predictions = predict.predict_files(model_path, files, AuditConfig(), quiet())
    assert [p.path for p in predictions] == [str(f) for f in files]
    errors = [p.error for p in predictions]
    assert [bool(e) for e in errors] == [False, True, False, True, False, True]
    assert "truncated" in errors[1].lower()
    assert "not a JPEG" in errors[3]
    assert "not found" in errors[5]
    for p in predictions:
        if not p.error:
            assert p.label in ("chihuahua", "muffin")
            assert 0.5 <= p.probability <= 1.0
        else:
            assert p.label == "" and math.isnan(p.probability)


def test_probability_is_that_of_the_predicted_class_from_the_cache_resize(model_path, files):
    model = modelfile.load_model(model_path)
    pixels = model_array(load_rgb(files[0], AuditConfig()), 24)[np.newaxis].astype(np.float32)
    p_muffin = float(model(pixels, training=False)[0, 0])
    (first, *_) = predict.predict_files(model_path, files[:1], AuditConfig(), quiet())
    expected = ("muffin", p_muffin) if p_muffin > 0.5 else ("chihuahua", 1 - p_muffin)
    assert first.label == expected[0]
    assert first.probability == pytest.approx(expected[1], abs=1e-5)


def test_formats_json_and_csv_carry_every_file(model_path, files):
    predictions = predict.predict_files(model_path, files, AuditConfig(), quiet())
    as_json = json.loads(predict.format_predictions(predictions, "json"))
    assert [item["path"] for item in as_json] == [str(f) for f in files]
    assert as_json[1]["probability"] is None and as_json[1]["error"]
    rows = list(csv.DictReader(io.StringIO(predict.format_predictions(predictions, "csv"))))
    assert list(rows[0]) == ["path", "label", "probability", "error"]
    assert rows[3]["error"] and rows[3]["probability"] == ""
    table = predict.format_predictions(predictions, "table")
    assert "error:" in table and str(files[0]) in table
    with pytest.raises(ConfigError, match="table, json, csv"):
        predict.format_predictions(predictions, "xml")


def test_cli_predict_exits_1_when_any_file_failed(model_path, files, capsys):
    from chimuf.cli import main

    assert main(["-q", "predict", str(model_path), str(files[0]), "--csv"]) == 0
    assert capsys.readouterr().out.startswith("path,label,probability,error")
    assert main(["-q", "predict", str(model_path), str(files[0]), str(files[3]), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert [bool(p["error"]) for p in printed] == [False, True]


def test_cli_predict_explain_writes_an_overlay_per_readable_file(model_path, files, tmp_path, capsys):
    from chimuf.cli import main

    outdir = tmp_path / "explained"
    assert main(["-q", "predict", str(model_path), str(files[0]), "--explain", str(outdir)]) == 0
    assert len(list(outdir.glob("*.png"))) == 1
    assert main(["-q", "predict", str(model_path), str(files[2]), str(files[3]),
                 "--explain", str(outdir)]) == 1
    assert len(list(outdir.glob("*.png"))) == 2
    capsys.readouterr()


def test_without_a_classes_file_labels_are_indices_with_a_warning(model_path, files, tmp_path):
    bare = tmp_path / "bare.keras"
    bare.write_bytes(model_path.read_bytes())
    stream = io.StringIO()
    (p,) = predict.predict_files(bare, files[:1], AuditConfig(), Console(stream=stream, live=False))
    assert p.label in ("0", "1")
    assert "bare.classes.json" in stream.getvalue()


HOSTILE_NAME = "a\x1b[2Jb\nfake line\u202egpj.exe"  # clears the screen, breaks the line, reverses text


def test_table_shows_control_characters_and_bidi_overrides_escaped():
    rows = [predict.FilePrediction(HOSTILE_NAME, "mu\u202effin", 0.9),
            predict.FilePrediction("ok.png", "", math.nan, "broken\x1b]0;title\x07")]
    table = predict.format_predictions(rows, "table")
    assert len(table.splitlines()) == 3  # header and two rows: no line of the file name's own
    assert "\x1b" not in table and "\u202e" not in table and "\x07" not in table
    assert r"a\x1b[2Jb\nfake line\u202egpj.exe" in table and r"mu\u202effin" in table


def test_csv_cells_that_would_run_as_formulas_are_defused_and_numbers_stay_numbers():
    rows = [predict.FilePrediction("=HYPERLINK(\"http://x\")", "+cmd", 0.5),
            predict.FilePrediction("@SUM(A1)", "-2+3", 0.25),
            predict.FilePrediction("\tx.png", "muffin", 0.75, ""),
            predict.FilePrediction("-0.5", "chihuahua", 1.0)]
    parsed = list(csv.reader(io.StringIO(predict.format_predictions(rows, "csv"))))
    assert [row[0] for row in parsed[1:]] == ["'=HYPERLINK(\"http://x\")", "'@SUM(A1)", "'\tx.png", "-0.5"]
    assert [row[1] for row in parsed[1:]] == ["'+cmd", "'-2+3", "muffin", "chihuahua"]
    assert [row[2] for row in parsed[1:]] == ["0.500000", "0.250000", "0.750000", "1.000000"]


def test_a_failed_explain_keeps_the_predictions_already_printed(model_path, files, tmp_path, capsys):
    from chimuf.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["-q", "predict", str(model_path), str(files[0]), "--explain", str(blocker)]) == 2
    out, err = capsys.readouterr()
    assert str(files[0]) in out and ("chihuahua" in out or "muffin" in out)
    assert err.count("\n") == 1 and "is a file; pass a folder" in err


def test_predict_reads_the_model_size_limit_from_the_config(model_path, files, tmp_path, capsys):
    from chimuf.cli import main

    config = tmp_path / "small.toml"
    config.write_text("[model_files]\nmax_params = 10\n")
    assert main(["-q", "predict", str(model_path), str(files[0]), "--config", str(config)]) == 2
    assert "more than `model_files.max_params` = 10" in capsys.readouterr().err


def test_a_run_folder_predicts_with_the_model_its_study_took_home(model_path, files, tmp_path, capsys):
    import shutil

    from chimuf.cli import main
    from chimuf.core.errors import ModelError
    from tests.report_fixture import complete_results, write_run

    run_dir = tmp_path / "run"
    results = complete_results(run_dir)
    (run_dir / "export").mkdir()
    shutil.copy(model_path, run_dir / "export" / "modern.keras")
    modelfile.write_classes(run_dir / "export" / "modern.keras", ["chihuahua", "muffin"], 0.3, "chosen")
    results.export.model_path = "export/modern.keras"
    write_run(run_dir, results)
    assert predict.model_of(run_dir) == run_dir / "export" / "modern.keras"
    assert predict.model_of(model_path) == model_path
    assert main(["predict", str(run_dir), str(files[0]), "--json"]) == 0
    assert "deciding at threshold 0.3 (from modern.classes.json" in capsys.readouterr().err
    results.export = None
    write_run(run_dir, results)
    with pytest.raises(ModelError, match="no exported model yet"):
        predict.model_of(run_dir)
    with pytest.raises(ModelError, match=r"without results\.json"):
        predict.model_of(tmp_path / "run" / "export")
