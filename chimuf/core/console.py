"""What the user sees while a study runs: messages, and progress of long work.

On a terminal, progress is a live bar (rich); in a Jupyter notebook, rich's notebook display
(it needs ipywidgets: `pip install 'chimuf[notebook]'`); elsewhere (CI logs, pipes) a plain line
every few seconds, so logs stay readable. Every message also goes to the run's log file when one
is set, and so do Python warnings from the libraries (scikit-learn's ConvergenceWarning from the
tuner's Gaussian process, say), which would otherwise break into the middle of the progress.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

NOTEBOOK_HINT = "live progress in a notebook needs ipywidgets: pip install 'chimuf[notebook]'"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebook, JupyterLab, VS Code, Colab); IPython is not imported
    for it, only asked when the kernel has loaded it already."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ in ("ZMQInteractiveShell", "Shell")  # Jupyter's kernel; Colab's


class Progress:
    """Progress of one long piece of work: `update(advance, status)`; use as a context manager."""

    def __init__(self, console: Console, description: str, total: int | None, unit: str):
        self.console = console
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self.status = ""
        self.started = time.monotonic()
        self._last_line = self.started  # the first plain line comes after one interval
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.console.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                transient=True,
                console=self.console.rich,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def update(self, advance: int = 1, status: str = "") -> None:
        self.done += advance
        self.status = status or self.status
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, status=self.status)
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last_line >= self.console.plain_interval_s:
            self._last_line = now
            self.console.write(f"  {self.description}: {self.summary()}", log=False)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        eta = ""
        if self.total and 0 < self.done < self.total:
            eta = f", ETA {format_seconds(elapsed / self.done * (self.total - self.done))}"
        status = f" {self.status}" if self.status else ""
        return f"{count} {self.unit} in {format_seconds(elapsed)}{eta}{status}".replace("  ", " ")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        self.console.write(f"  {self.description}: {self.summary()}", echo=False)


class Console:
    """Messages for the user and the run log. One per process, made at the edge (the CLI)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, quiet: bool = False,
                 notebook: bool | None = None):
        self.stream = stream or sys.stderr
        self.notebook = in_notebook() if notebook is None else notebook
        widgets = self.notebook and importlib.util.find_spec("ipywidgets") is not None
        self.live = (self.stream.isatty() or widgets) if live is None else live
        self.quiet = quiet
        self.plain_interval_s = 10.0
        self.log_file: TextIO | None = None
        self._rich = None
        self._hinted = not self.notebook or widgets
        self._shown_before = warnings.showwarning  # what log_to(None) puts back

    @property
    def rich(self):
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False, force_jupyter=self.notebook or None)
        return self._rich

    def log_to(self, path: Path | None) -> None:
        """Append every later message to `path` (the run's log)."""
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        if warnings.showwarning == self.log_warning:
            warnings.showwarning = self._shown_before
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.log_file = path.open("a", encoding="utf-8")
            self._shown_before = warnings.showwarning
            warnings.showwarning = self.log_warning

    def log_warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: Any = None, line: str | None = None) -> None:
        """warnings.showwarning while a log is set: the warning goes to the log, not the screen."""
        self.write(f"warning: {category.__name__}: {message} ({Path(filename).name}:{lineno})", echo=False)

    def write(self, message: str, echo: bool = True, log: bool = True) -> None:
        # messages quote file and class names from outside: shown escaped, line by line
        message = "\n".join(printable(line) for line in message.split("\n"))
        if echo and not self.quiet:
            print(message, file=self.stream, flush=True)
        if log and self.log_file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.log_file.write(f"{stamp} {message}\n")
            self.log_file.flush()

    def info(self, message: str) -> None:
        self.write(message)

    def warn(self, message: str) -> None:
        self.write(f"warning: {message}")

    def progress(self, description: str, total: int | None = None, unit: str = "") -> Progress:
        if not self._hinted:
            self._hinted = True
            self.info(NOTEBOOK_HINT)
        return Progress(self, description, total, unit)


class ForwardingConsole(Console):
    """The console of a worker process (chimuf.ml.training.pool): every message goes whole to `send(message,
    echo, log)`, which hands it to the study's process, the one that prints and logs. Only one
    process writes to the terminal, so lines of units in flight never break into each other.
    Progress is plain (no live bar), a line every `interval_s`."""

    def __init__(self, send: Callable[[str, bool, bool], None], interval_s: float = 30.0):
        super().__init__(stream=io.StringIO(), live=False, notebook=False)
        self.send = send
        self.plain_interval_s = interval_s

    def write(self, message: str, echo: bool = True, log: bool = True) -> None:
        self.send(message, echo, log)


def unit_line(unit: str, message: str) -> str:
    """A worker's message as the study prints it: each line says which unit it comes from,
    "  model2: ..." (kept as it is when it starts with the unit's name already)."""
    def one(line: str) -> str:
        text = line.strip()
        if not text or text.removeprefix("warning: ").startswith(unit):
            return line
        return f"  {unit}: {text}"

    return "\n".join(one(line) for line in message.split("\n"))


def printable(text: str) -> str:
    """`text` safe to print on a terminal: every character Python's `repr` would escape (control
    characters such as ESC and newlines, bidi overrides like U+202E, other invisible format
    characters) shown as `repr` shows it (`\\x1b`, `\\n`, `\\u202e`); the rest unchanged.

    File names and class names come from outside, and a name holding an escape sequence or a
    right-to-left override would otherwise rewrite what the user sees."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
