"""What the user sees: library warnings go to the run's log, and a notebook gets rich's display."""

from __future__ import annotations

import io
import sys
import types
import warnings

from chimuf.core import console as console_module
from chimuf.core.console import NOTEBOOK_HINT, Console


def test_library_warnings_go_to_the_run_log_not_into_the_progress(tmp_path, capsys):
    from sklearn.exceptions import ConvergenceWarning

    screen = io.StringIO()
    console = Console(stream=screen, live=False)
    console.log_to(tmp_path / "study.log")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("lbfgs failed to converge (status=2)", ConvergenceWarning, stacklevel=1)
    console.log_to(None)
    assert screen.getvalue() == ""
    assert capsys.readouterr().err == ""
    logged = (tmp_path / "study.log").read_text()
    assert "warning: ConvergenceWarning: lbfgs failed to converge (status=2)" in logged
    assert warnings.showwarning != console.log_warning  # put back once the log is closed


def fake_notebook(monkeypatch, widgets: bool) -> None:
    """IPython as a Jupyter kernel has it loaded: a shell of class ZMQInteractiveShell."""
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    real = console_module.importlib.util.find_spec
    monkeypatch.setattr(console_module.importlib.util, "find_spec",
                        lambda name: (object() if widgets else None) if name == "ipywidgets" else real(name))


def test_in_a_notebook_progress_is_richs_notebook_display(monkeypatch):
    fake_notebook(monkeypatch, widgets=True)
    console = Console(stream=io.StringIO())  # not a TTY
    assert console.notebook and console.live
    assert console.rich.is_jupyter


def test_in_a_notebook_without_ipywidgets_progress_is_plain_lines_and_says_why(monkeypatch):
    fake_notebook(monkeypatch, widgets=False)
    screen = io.StringIO()
    console = Console(stream=screen)
    assert console.notebook and not console.live
    with console.progress("training", total=2, unit="epochs") as progress:
        progress.update()
    console.progress("again", total=1)
    assert screen.getvalue().count(NOTEBOOK_HINT) == 1


def test_outside_a_notebook_a_pipe_gets_plain_lines():
    console = Console(stream=io.StringIO())
    assert not console.notebook and not console.live


def test_every_message_reaches_the_terminal_and_the_log_escaped(tmp_path):
    """A file name is quoted in many warnings; an escape sequence or a right-to-left override in
    it must not rewrite the screen, whichever stage or tool prints it."""
    screen = io.StringIO()
    console = Console(stream=screen, live=False)
    console.log_to(tmp_path / "study.log")
    console.warn("not explained: `evil\x1b[2J\u202egpj.exe`: not an image\nsecond line")
    console.log_to(None)
    shown = screen.getvalue()
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "`evil\\x1b[2J\\u202egpj.exe`" in shown
    assert shown.splitlines()[1] == "second line"  # a message's own lines stay lines
    assert "\x1b" not in (tmp_path / "study.log").read_text()
