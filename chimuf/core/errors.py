"""The few exceptions chimuf raises on purpose.

Each message says what was expected, what was found (naming the key, path or value) and what to
do. The CLI prints the message as one line and exits non-zero; any other exception is a bug.
"""


class ChimufError(Exception):
    """Base of every error chimuf reports to the user without a traceback.

    `detail` is what a library said at length (Keras' nested messages, say): the CLI writes it to
    the run's log, not to the terminal, so the user sees one line and the log keeps the rest.
    """

    exit_code = 2

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class ConfigError(ChimufError):
    """A study config, profile or command-line value is not valid."""


class DataError(ChimufError):
    """A data folder, image file or split cannot be used as given."""


class ModelError(ChimufError):
    """A model file is missing, unsafe, or does not fit the data."""


class ReportError(ChimufError):
    """The report could not be rendered (missing tool, failing tool, timeout)."""


class StageError(ChimufError):
    """A study stage failed in a way that stops the study."""


class Interrupted(ChimufError):
    """The study was stopped by a signal (SIGINT, SIGTERM); a rerun resumes it."""

    exit_code = 130
