"""The report: results.json → Markdown → HTML and PDF, escaped, self-contained, never hanging.

The run is the hand-made one of report_fixture.py (no training). The complete report is rendered
once per module; tests that need another run render their own. PDF text is read with pypdf when
installed, else with poppler's pdftotext; the browser check needs Chromium (Debian: `chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from chimuf.core.config import ReportConfig
from chimuf.core.console import Console
from chimuf.core.errors import ReportError
from chimuf.core.results import Figure
from chimuf.report import build_report, read_results, render
from chimuf.report.escape import Trusted, markdown_text
from chimuf.report.figures import plan_figures
from chimuf.report.markdown import environment, render_markdown
from chimuf.report.views import paper_rows
from tests.report_fixture import ACCURACY, INJECTION, ROC_AUC, complete_results, partial_results, write_run

SECTIONS = {  # heading id → title, as the templates write them
    "sec-introduction": "Introduction",
    "sec-dataset": "Dataset",
    "sec-audit": "Audit findings",
    "sec-split": "Partitioning",
    "sec-augmentation": "Augmentation and early stopping",
    "sec-models": "Model implementation",
    "sec-trainings": "Results of the six trainings",
    "sec-augmentation-impact": "Impact of data augmentation",
    "sec-tuning": "Hyperparameter tuning",
    "sec-final": "Final model",
    "sec-evaluation": "Confusion matrix and ROC curve",
    "sec-confusion": "Confusion matrix",
    "sec-roc": "ROC curve",
    "sec-calibration": "Calibration and decision threshold",
    "sec-mcnemar": "McNemar tests",
    "sec-leakage": "Leakage-free accuracy",
    "sec-paper": "This run beside the paper",
    "sec-kfold": "N-fold cross-validation",
    "sec-errors": "Error analysis",
    "sec-kernels": "Kernel weights",
    "sec-activations": "Activations",
    "sec-gradcam": "Grad-CAM per layer on misclassified images",
    "sec-methods": "Grad-CAM beside other methods",
    "sec-gallery": "The most confident mistakes",
    "sec-labels": "Suspect labels",
    "sec-conclusion": "Conclusion",
    "sec-run": "Run facts",
}
QUIET = Console(quiet=True)


# --- helpers -----------------------------------------------------------------------------------


def pdf_text(path: Path) -> str:
    """The PDF's text, whitespace collapsed; skips the test when no extractor is installed."""
    try:
        from pypdf import PdfReader
    except ImportError:
        if shutil.which("pdftotext") is None:
            pytest.skip("no PDF text extractor: install pypdf, or poppler-utils for pdftotext")
        raw = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True,
                             text=True).stdout
    else:
        raw = "\n".join(page.extract_text() for page in PdfReader(path).pages)
    return " ".join(raw.replace("\u00ad", "").split())


class Elements(HTMLParser):
    """Every start tag of an HTML document with its attributes, and its text."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def plain_text(self) -> str:
        return " ".join("".join(self.text).split())


def render_run(run_dir: Path, results, **cfg) -> tuple[Path, object]:
    write_run(run_dir, results)
    outcome = build_report(run_dir, ReportConfig(**cfg) if cfg else ReportConfig(), QUIET)
    return run_dir, outcome


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The complete fixture run, rendered once to Markdown, HTML and PDF with pandoc and Typst."""
    run_dir = tmp_path_factory.mktemp("complete") / "run"
    return render_run(run_dir, complete_results(run_dir))


# --- escaping ----------------------------------------------------------------------------------


def test_escaped_text_renders_to_exactly_itself_through_pandoc() -> None:
    """Hundreds of random strings of Markdown-special characters, each one paragraph, come out
    of pandoc as the same text: nothing became a link, an image, maths, emphasis or code."""
    import random

    alphabet = "ab 01<>&\"'`*_~^$#@!|[](){}:;.,-+=/\\%?" + "é€\u00a0"
    rng = random.Random(0)
    samples = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    samples += [INJECTION, "<b>muffin</b>", "1. not a list", "# not a heading", "{{< meta title >}}",
                "---", "| a | b |", "[link](http://x)", "a\nb\r\nc\tend", "-5", "> quote"]
    source = "\n\n".join(f"S {markdown_text(s)} E" for s in samples)
    from chimuf.report.render import READER, pandoc_path

    out = subprocess.run([pandoc_path(), "-f", READER + "-smart", "-t", "plain", "--wrap=none"],
                         input=source, capture_output=True, text=True, check=True).stdout
    paragraphs = [p for p in out.split("\n\n") if p.strip()]
    expected = ["S " + " ".join(s.split()) + " E" if s.split() else "S E" for s in samples]
    got = [" ".join(p.replace("\u00a0", " ").split()) for p in paragraphs]
    assert got == [" ".join(e.replace("\u00a0", " ").split()) for e in expected]


def test_quarto_and_pandoc_read_the_markdown_with_the_same_restricted_reader() -> None:
    from chimuf.report.render import PROJECT_TEMPLATE_DIR, READER

    quarto = (PROJECT_TEMPLATE_DIR / "_quarto.yml").read_text(encoding="utf-8")
    assert f"\nfrom: {READER}\n" in quarto
    assert all(f"-{ext}" in READER for ext in ("raw_html", "raw_attribute", "raw_tex", "tex_math_dollars"))


def test_template_values_are_escaped_unless_trusted() -> None:
    env = environment()
    out = env.from_string("{{ name }} | {{ built }} | {{ built_by_filter | trusted }}").render(
        name=INJECTION, built=Trusted("**bold**"), built_by_filter="*x*")
    assert out == f"{markdown_text(INJECTION)} | **bold** | *x*"
    assert re.search(r"(?<!\\)[<*$]", out.split(" | ")[0]) is None  # each one backslash-escaped


# --- the complete report -----------------------------------------------------------------------


def test_complete_run_renders_markdown_html_and_pdf(rendered) -> None:
    run_dir, outcome = rendered
    assert outcome.engine == "pandoc"
    assert (outcome.markdown, outcome.html, outcome.pdf) == (
        "report/index.qmd", "report/index.html", "report/index.pdf")
    for rel in (outcome.markdown, outcome.html, outcome.pdf):
        assert (run_dir / rel).stat().st_size > 1000
    assert (run_dir / "report" / "_quarto.yml").is_file()
    assert (run_dir / outcome.pdf).read_bytes().startswith(b"%PDF")


def test_html_has_every_section_and_every_figure_embedded(rendered) -> None:
    run_dir, outcome = rendered
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8"))
    ids = {attrs.get("id") for _tag, attrs in html.tags}
    assert set(SECTIONS) <= ids, set(SECTIONS) - ids
    images = html.named("img")
    # every figure once, the confusion matrix twice (small, on the at-a-glance page too)
    assert len(images) == len(plan_figures(read_results(run_dir))) + 1
    assert len({img.get("src") for img in images}) == len(plan_figures(read_results(run_dir)))
    assert all((img.get("src") or "").startswith("data:image/png;base64,") for img in images)
    assert html.named("script") == []
    assert not [a for _t, a in html.tags if any(k.startswith("on") for k in a)]
    assert not [a for _t, a in html.named("link") if a.get("rel") == "stylesheet"]
    assert any(a.get("http-equiv") == "Content-Security-Policy" for a in html.named("meta"))


def test_pdf_has_every_section_numbered_figures_and_the_key_numbers(rendered) -> None:
    run_dir, outcome = rendered
    text = pdf_text(run_dir / outcome.pdf)
    missing = [title for title in SECTIONS.values() if title not in text]
    assert missing == []
    assert f"{ACCURACY:.3f}" in text and f"{ROC_AUC:.3f}" in text
    assert "Figure 1:" in text and "Figure 26:" in text  # 25 figures, the confusion matrix twice
    assert "n/a (other data)" not in text


def test_confusion_matrix_orientation_is_stated_and_rows_are_true_classes(rendered) -> None:
    run_dir, outcome = rendered
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert "Rows are the true class, columns the predicted class" in markdown
    # fixture: 15 chihuahuas predicted muffin, 31 muffins predicted chihuahua
    assert "| **chihuahua** | 497 | 15 |" in markdown
    assert "| **muffin** | 31 | 404 |" in markdown


def test_paper_column_sits_beside_the_runs_numbers_with_intervals(rendered) -> None:
    run_dir, outcome = rendered
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert "| Accuracy | 0.94 | 0.951 \\[0.938\\, 0.964\\] |" in markdown
    assert "| ROC AUC | 0.983 | 0.987 \\[0.981\\, 0.992\\] |" in markdown
    assert "| Recall\\, muffin | 0.90 | 0.929 |" in markdown


def test_settings_that_differ_from_the_paper_are_listed_and_bold(rendered) -> None:
    run_dir, outcome = rendered
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert "| train\\.epochs | 50 | 8 |" in markdown  # profile quick against the paper
    assert "| **train\\.epochs** | **8** |" in markdown
    assert "| train\\.batch\\_size | 64 |" in markdown  # unchanged: not bold


# --- markup injection --------------------------------------------------------------------------


def test_injected_file_name_stays_literal_text_in_markdown_and_html(rendered) -> None:
    run_dir, outcome = rendered
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert markdown_text(INJECTION) in markdown
    assert re.search(r"(?<!\\)<", markdown) is None  # no "<" anywhere that is not escaped
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8"))
    assert INJECTION in html.plain_text()
    assert [img.get("src") for img in html.named("img") if img.get("src") == "x"] == []
    assert all("onerror" not in attrs for _tag, attrs in html.tags)
    assert html.named("math") == []


def test_injected_file_name_stays_literal_text_in_pdf(rendered) -> None:
    run_dir, outcome = rendered
    assert INJECTION in pdf_text(run_dir / outcome.pdf)


def test_class_named_with_markup_stays_text_and_paper_column_says_other_data(tmp_path: Path) -> None:
    results = complete_results(tmp_path / "run", ("dog", "<b>muffin</b>"))
    run_dir, outcome = render_run(tmp_path / "run", results)
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8"))
    assert html.named("b") == []
    assert "<b>muffin</b>" in html.plain_text()
    assert "n/a (other data)" in html.plain_text()
    text = pdf_text(run_dir / outcome.pdf)
    assert "<b>muffin</b>" in text and "n/a (other data)" in text


def test_paper_column_matches_class_names_case_insensitively(tmp_path: Path) -> None:
    results = complete_results(tmp_path, ("Chihuahua", "MUFFIN"))
    rows = {str(row[0]): row[1] for row in paper_rows(results)}
    assert rows["Accuracy"] == "0.94"
    assert rows["Precision, MUFFIN"] == "0.97"


# --- partial runs ------------------------------------------------------------------------------


def test_partial_run_renders_and_says_which_stages_have_not_run(tmp_path: Path) -> None:
    run_dir, outcome = render_run(tmp_path / "run", partial_results(tmp_path / "run"))
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert "Partial run" in markdown
    for stage in ("train", "tune", "final", "evaluate", "kfold", "labels", "explain"):
        assert f"Not run yet in this run: the {stage} stage has no results." in markdown
    # the duplicates wait for the labels stage to draw them: a short table meanwhile
    assert "The labels stage draws them as thumbnails once it has run" in markdown
    assert "| near | chihuahua\\/img\\_0200\\.jpg\\; muffin\\/img\\_0300\\.jpg |" in markdown
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8")).plain_text()
    assert "Not run yet in this run: the evaluate stage" in html
    assert "partial run" in html  # in the subtitle, above the table of contents
    assert "Not run yet in this run: the evaluate stage" in pdf_text(run_dir / outcome.pdf)


def test_first_page_is_the_run_at_a_glance_before_the_contents(rendered) -> None:
    run_dir, outcome = rendered
    from pypdf import PdfReader

    first = " ".join(PdfReader(run_dir / outcome.pdf).pages[0].extract_text().split())
    for expected in ("At a glance", "finished", "Test accuracy", "0.951 [0.938, 0.964]", "0.94",
                     "better than chance", "Suspect labels", "Time in stages", "Confusion matrix"):
        assert expected in first, expected
    assert "Contents" not in first  # the contents begin on the next page
    html = (run_dir / outcome.html).read_text(encoding="utf-8")
    assert html.index('class="abstract"') < html.index('id="TOC"') < html.index('id="sec-introduction"')
    assert 'id="fig-glance-confusion"' in html


def test_file_name_tables_became_pictures_and_linked_csv_files(rendered) -> None:
    run_dir, outcome = rendered
    markdown = (run_dir / outcome.markdown).read_text(encoding="utf-8")
    assert "| Kind | Files |" not in markdown  # duplicates: strips made by the labels stage
    assert "Probability of the true class |" not in markdown  # mistakes: the gallery
    for figure in ("labels-duplicates-1", "explain-gallery", "labels-suspect-labels", "tune-trials",
                   "tune-hyperparameters"):
        assert f"-{figure}.png" in markdown, figure
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8"))
    links = {a.get("href") for a in html.named("a")}
    assert {"../labels/duplicate_groups.csv", "../labels/suspect_labels.csv", "../explain/misclassified.csv",
            "../kfold/oof_predictions.csv", "../evaluate/predictions.csv"} <= links


def test_failed_run_says_so_at_the_top_with_its_error(tmp_path: Path) -> None:
    results = partial_results(tmp_path / "run")
    results.run = replace(results.run, status="failed", error="disk full while writing `cache/x.npy`")
    markdown = render_markdown(results, {})
    top = markdown.split("# Introduction")[0]
    assert "This run failed" in top and "disk full while writing \\`cache\\/x\\.npy\\`" in top
    assert "failed run" in top.split("\n")[2]  # the subtitle


# --- figures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd.png", "train/../../x.png", "C:/x.png",
                                 "train/notes.svg"])
def test_figure_paths_outside_the_run_or_not_images_are_refused(tmp_path: Path, bad: str) -> None:
    results = complete_results(tmp_path / "run")
    results.kfold.figure = Figure(bad, "sneaky")
    write_run(tmp_path / "run", results)
    with pytest.raises(ReportError, match=re.escape(bad)):
        build_report(tmp_path / "run", ReportConfig(formats=("html",)), QUIET)


def test_figure_linked_to_a_file_outside_the_run_is_refused(tmp_path: Path) -> None:
    results = complete_results(tmp_path / "run")
    secret = tmp_path / "secret.png"
    secret.write_bytes((tmp_path / "run" / "kfold" / "folds.png").read_bytes())
    (tmp_path / "run" / "kfold" / "folds.png").unlink()
    (tmp_path / "run" / "kfold" / "folds.png").symlink_to(secret)
    write_run(tmp_path / "run", results)
    with pytest.raises(ReportError, match="leads out of the run folder"):
        build_report(tmp_path / "run", ReportConfig(formats=("html",)), QUIET)


def test_missing_figure_file_is_named_in_the_report_not_a_broken_build(tmp_path: Path) -> None:
    results = complete_results(tmp_path / "run")
    (tmp_path / "run" / "evaluate" / "roc.png").unlink()
    run_dir, outcome = render_run(tmp_path / "run", results, formats=("html",))
    html = Elements((run_dir / outcome.html).read_text(encoding="utf-8")).plain_text()
    assert "The ROC curve file evaluate/roc.png named in results.json is missing from the run folder" in html
    assert outcome.pdf == ""


# --- tools: missing, failing, hanging ----------------------------------------------------------


def fake_pandoc(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-pandoc"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_hanging_render_is_stopped_with_a_clear_error_and_results_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = write_run(tmp_path / "run", complete_results(tmp_path / "run"))
    before = (run_dir / "results.json").read_bytes()
    pid_file = tmp_path / "pid"
    hanging = fake_pandoc(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    monkeypatch.setattr(render, "pandoc_path", lambda: hanging)
    started = time.monotonic()
    with pytest.raises(ReportError, match=r"did not finish within report\.timeout_s = 1 s"):
        build_report(run_dir, ReportConfig(timeout_s=1), QUIET)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the hung tool was killed, not left behind
    assert (run_dir / "results.json").read_bytes() == before
    assert not (run_dir / "report" / "index.html").exists()


def test_failing_tool_error_carries_its_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))
    failing = fake_pandoc(tmp_path, "echo 'boom: bad input' >&2; exit 3")
    monkeypatch.setattr(render, "pandoc_path", lambda: failing)
    with pytest.raises(ReportError, match=r"pandoc \(HTML\) failed with exit status 3: boom: bad input"):
        build_report(run_dir, ReportConfig(), QUIET)


def test_missing_pandoc_error_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pypandoc

    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))

    def no_pandoc() -> str:
        raise OSError("No pandoc was found")

    monkeypatch.setattr(pypandoc, "get_pandoc_path", no_pandoc)
    with pytest.raises(ReportError, match="pip install pypandoc-binary"):
        build_report(run_dir, ReportConfig(), QUIET)


def test_quarto_engine_without_quarto_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))
    monkeypatch.setattr(render.shutil, "which", lambda _name: None)
    with pytest.raises(ReportError, match=r"quarto\.org"):
        build_report(run_dir, ReportConfig(engine="quarto"), QUIET)


def test_run_folder_without_results_json_says_to_run_the_study_first(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="chimuf study"):
        build_report(tmp_path, ReportConfig(), QUIET)


def test_results_json_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 999}))
    with pytest.raises(ReportError, match="schema_version 999"):
        build_report(tmp_path, ReportConfig(), QUIET)


def results_json_with(tmp_path: Path, change) -> Path:
    """A run folder whose results.json is the complete fixture passed through `change(dict)`."""
    from chimuf.core.results import to_jsonable

    data = to_jsonable(complete_results(tmp_path))
    change(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    return tmp_path


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["evaluate"].update(accuracy="high"), r"`evaluate.accuracy` must be a number, got \"high"),
    (lambda d: d["evaluate"]["confusion_figure"].update(path=5),
     r"`evaluate.confusion_figure.path` must be a string, got 5"),
    (lambda d: d["run"].update(extra=1), r"`run.extra` is not a field of RunInfo"),
    (lambda d: d["audit"].pop("digest"), r"`audit.digest` is missing"),
    (lambda d: d["train"]["trainings"][0].update(params=1.5),
     r"`train.trainings\[0\].params` must be a whole"),
])
def test_results_json_of_the_wrong_types_is_one_line_naming_the_key(tmp_path: Path, capsys, change,
                                                                     message) -> None:
    from chimuf.cli import main

    run_dir = results_json_with(tmp_path, change)
    with pytest.raises(ReportError, match=message):
        read_results(run_dir)
    assert main(["--quiet", "report", str(run_dir)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_whole_numbers_in_float_fields_are_read_and_kept_as_written(tmp_path: Path) -> None:
    from chimuf.core.results import digest, to_jsonable

    def whole_accuracy(data):
        data["evaluate"]["accuracy"] = 1

    run_dir = results_json_with(tmp_path, whole_accuracy)
    results = read_results(run_dir)
    assert results.evaluate.accuracy == 1
    assert digest(to_jsonable(results)) == digest(json.loads((run_dir / "results.json").read_text()))


def test_results_json_nested_too_deep_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ReportError, match="nests its JSON too deeply"):
        read_results(tmp_path)


def test_a_run_stopped_after_a_stage_says_so_at_the_top(tmp_path: Path) -> None:
    results = partial_results(tmp_path / "run")
    results.run = replace(results.run, status="stopped")
    top = render_markdown(results, {}).split("# Introduction")[0]
    assert "stopped on purpose (`--stop-after`)" in top and "Not run yet: cache" in top


def test_missing_templates_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chimuf.report import markdown

    monkeypatch.setattr(markdown, "TEMPLATES_DIR", tmp_path / "nowhere")
    with pytest.raises(ReportError, match="templates are missing"):
        render_markdown(partial_results(tmp_path), {})


# --- the edges: CLI, imports -------------------------------------------------------------------


def test_chimuf_report_command_renders_a_run(tmp_path: Path) -> None:
    from chimuf.cli import main

    run_dir = write_run(tmp_path / "run", partial_results(tmp_path / "run"))
    assert main(["--quiet", "report", str(run_dir), "--format", "html"]) == 0
    assert (run_dir / "report" / "index.html").is_file()
    assert not (run_dir / "report" / "index.pdf").exists()


def test_importing_the_report_imports_no_tensorflow_or_matplotlib() -> None:
    code = ("import sys, chimuf.report; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the HTML in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class ChromiumDied(RuntimeError):
    """Chromium exited before it answered; the message ends with what it wrote on stderr."""


def browse(url: str, timeout_s: float = 30.0) -> dict[str, object]:
    """Load `url` in headless Chromium over the DevTools protocol (a pipe: no port, no websocket).

    Returns the scripts the page parsed before its load event, the dialogs it opened, and for
    every <img> whether it loaded (naturalWidth > 0).
    """
    import select

    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="chimuf-chromium-")
    stderr_path = Path(profile) / "stderr.txt"
    # Chromium reads commands on fd 3 and answers on fd 4. A small Python trampoline puts the pipes
    # there and execs it, so no preexec_fn runs between fork and exec (unsafe in a process with
    # TensorFlow's threads).
    trampoline = ("import os, sys; r, w = (int(a) for a in sys.argv[1:3]); "
                  "a, b = os.dup(r), os.dup(w); os.dup2(a, 3); os.dup2(b, 4); "
                  "[os.set_inheritable(fd, True) for fd in (3, 4)]; "  # dup2(3, 3) keeps dup's close-on-exec
                  "[os.close(fd) for fd in {r, w, a, b} - {3, 4}]; os.execv(sys.argv[3], sys.argv[3:])")
    command = [sys.executable, "-c", trampoline, str(to_chrome_r), str(from_chrome_w),
               CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
               "about:blank"]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, pass_fds=(to_chrome_r, from_chrome_w),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    deadline = time.monotonic() + timeout_s
    buffer, events, next_id = b"", [], [0]

    def died() -> ChromiumDied:
        process.wait(timeout=10)
        said = stderr_path.read_text(errors="replace").strip().splitlines()[-5:]
        return ChromiumDied(f"Chromium exited with status {process.returncode}: " + " | ".join(said))

    def receive() -> dict:
        nonlocal buffer
        while b"\0" not in buffer:
            if not select.select([from_chrome_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(from_chrome_r, 1 << 16)
            if not chunk:
                raise died()
            buffer += chunk
        raw, buffer = buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            events.append(message)
            if message["method"] == "Page.javascriptDialogOpening":  # answer it, or the page hangs
                post("Page.handleJavaScriptDialog", {"accept": True}, message["sessionId"])
        return message

    def post(method: str, params: dict | None = None, session: str | None = None) -> int:
        next_id[0] += 1
        message = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(to_chrome_w, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise died() from None
        return next_id[0]

    def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = post(method, params, session)
        while (message := receive()).get("id") != wanted:
            pass
        return message.get("result", {})

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Debugger.enable"):
            call(domain, session=session)
        events.clear()
        call("Page.navigate", {"url": url}, session)
        while not any(e["method"] == "Page.loadEventFired" for e in events):
            receive()
        scripts = [e["params"].get("url") for e in events if e["method"] == "Debugger.scriptParsed"]
        dialogs = [e["params"].get("message") for e in events
                   if e["method"] == "Page.javascriptDialogOpening"]
        images = call("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images, i => [i.complete, i.naturalWidth]))",
            "returnByValue": True}, session)["result"]["value"]
        post("Browser.close")
        return {"scripts": scripts, "dialogs": dialogs, "images": json.loads(images)}
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_html_in_a_browser_loads_every_image_and_runs_no_script(rendered) -> None:
    run_dir, outcome = rendered
    page = browse((run_dir / outcome.html).resolve().as_uri())
    assert page["scripts"] == [] and page["dialogs"] == []
    # every figure, and the confusion matrix a second time on the at-a-glance page
    assert len(page["images"]) == len(plan_figures(read_results(run_dir))) + 1
    assert all(complete and width > 0 for complete, width in page["images"])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_browser_check_sees_a_script_and_a_broken_image(tmp_path: Path) -> None:
    """The browser check can fail: on a page with an inline script, a handler and a broken image."""
    page_file = tmp_path / "bad.html"
    page_file.write_text('<html><body><img src="x" onerror="alert(1)">'
                         '<script>var a = 1;</script></body></html>')
    page = browse(page_file.as_uri())
    assert page["scripts"] and page["dialogs"] == ["1"]
    assert page["images"] == [[True, 0]]


# --- your study's report: title, author, abstract, your own templates ---------------------------


def with_report_settings(results, **settings):
    config = {**results.run.config, "report": {**results.run.config["report"], **settings}}
    return replace(results, run=replace(results.run, config=config))


def test_title_author_and_abstract_replace_the_reproductions_front_matter(tmp_path: Path) -> None:
    results = with_report_settings(complete_results(tmp_path / "run"), title="Muffins *at* dawn",
                                   author="A. Student", abstract="We ask whether a CNN tells them apart.")
    front = render_markdown(results, {}).split("\n---\n")[0]
    assert 'title: "Muffins \\\\*at\\\\* dawn"' in front and "A reproduction" not in front
    assert 'author: "A\\\\. Student"' in front and 'abstract-title: "Abstract"' in front
    assert "We ask whether a CNN tells them apart\\." in front and "**At a glance.**" in front
    plain = render_markdown(complete_results(tmp_path / "run"), {}).split("\n---\n")[0]
    assert "A reproduction on" in plain and "author:" not in plain


def test_own_templates_replace_the_packaged_ones_of_the_same_name_only(tmp_path: Path) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    (own / "introduction.md.j2").write_text("# Why we did this {#sec-introduction}\n\nOur own words.\n")
    results = with_report_settings(complete_results(tmp_path / "run"), templates=str(own))
    markdown = render_markdown(results, {}, own)
    assert "# Why we did this" in markdown and "Our own words." in markdown
    assert "# Dataset {#sec-dataset}" in markdown  # the others are the packaged ones
    with pytest.raises(ReportError, match=r"report.templates names .*missing.*, which is not a folder"):
        render_markdown(results, {}, tmp_path / "missing")


def test_dataset_section_says_the_positive_class_and_the_given_test_sets_duplicates(tmp_path: Path) -> None:
    from chimuf.core.results import DuplicateGroup, FileRecord

    results = complete_results(tmp_path / "run")
    positive = results.audit.classes[-1]
    given = FileRecord("test:muffin/b.jpg", "muffin", "usable", "", 10, "f" * 64, split="test")
    leak = DuplicateGroup("near", ["muffin/a.jpg", given.path], ["muffin", "muffin"], False)
    results.audit = replace(results.audit, positive=positive, test_dir="/data/test", test_duplicates=[leak],
                            files=[*results.audit.files, given])
    section = " ".join(render_markdown(results, {}).split("# Dataset")[1].split("# Partitioning")[0].split())
    assert f"The positive class is **{positive}** (chosen with `data.positive`)" in section
    assert "The test set is given: the folder \\/data\\/test" in section
    assert "1 group links a test image with 1 image" in section
    assert "They were kept (set `data.drop_test_duplicates = true`" in section
    results.split = replace(results.split, given=["test"], dropped=["muffin/a.jpg"])
    markdown = " ".join(render_markdown(results, {}).split())
    assert ("They were left out of training and validation (1 image, `data.drop_test_duplicates`)"
            in markdown)
    assert ("The test split was given (a given folder, or the labels CSV's `split` column) and kept"
            in markdown)
