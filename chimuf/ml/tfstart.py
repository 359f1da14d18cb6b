"""Start TensorFlow without its C++ start-up chatter on the user's terminal.

TensorFlow 2.20+ logs through Abseil, which writes everything to stderr until its logging is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot hide the oneDNN and CUDA-probing notes printed
while TensorFlow loads and looks for devices. chimuf therefore loads TensorFlow once, at the
edge, with file descriptor 2 pointed at a temporary file, and replays whatever is not one of
those notes: real errors still reach the user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Abseil's INFO and WARNING lines ("I0000 00:00:1795887742.120600  10328 port.cc:153] ..."), its
# "not initialised" banner, and the one ERROR every machine without a GPU gets.
NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|E\d{4} \d\d:\d\d:[\d.]+ +\d+ cuda_[a-z_]+\.cc:\d+\] failed call to cuInit"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)"
)


def quiet_tensorflow() -> None:
    """Ask TensorFlow for errors only (before it is imported; a user's own setting wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def start_tensorflow(threads: int = 0) -> str:
    """Import TensorFlow and probe its devices with the start-up notes filtered out; with
    `threads`, give its intra- and inter-op thread pools that many threads each.

    The threads are set before anything starts TensorFlow's runtime, which fixes them for the
    life of the process: TensorFlow's default is one per core, and sums split over another number
    of threads round otherwise, so a fixed count keeps a seed's numbers the same on every machine
    and in every worker of a pool (chimuf.ml.training.pool). Returns "" or, when TensorFlow was started
    before with other threads (a notebook that used it first), a one-line note saying so.
    Importing is a no-op when TensorFlow is already loaded; the notes are shown when the user
    asked for them with `TF_CPP_MIN_LOG_LEVEL=0|1`.
    """
    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1"):
        with native_notes_filtered():
            import tensorflow as tf

            note = set_threads(threads)
            tf.config.list_physical_devices()
        return note
    return set_threads(threads)


def set_threads(threads: int) -> str:
    """TensorFlow's intra- and inter-op threads set to `threads` (0: leave its default); "" or a
    note when its runtime runs already with another count, which can no longer change."""
    import tensorflow as tf

    if threads <= 0:
        return ""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime is initialised: its thread pools are made
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            running = f"{current} threads" if current else "one thread per core"
            return (f"TensorFlow was started before chimuf, with {running}, not train.threads_per_unit = "
                    f"{threads}: this process trains with those, and its numbers may differ from a "
                    "fresh process's; start a new Python process to use the config's")
    return ""


@contextlib.contextmanager
def native_notes_filtered() -> Iterator[None]:
    """Run the block with file descriptor 2 captured, then replay what is not a known note: for
    TensorFlow's C++ code, which writes past Python's sys.stderr."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = drop_noise(captured.read().decode("utf-8", "replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def drop_noise(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.match(line))
