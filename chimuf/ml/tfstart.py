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


def start_tensorflow() -> None:
    """Import TensorFlow and probe its devices with the start-up notes filtered out.

    A no-op when TensorFlow is already loaded, or when the user asked for its INFO or WARNING
    logs with `TF_CPP_MIN_LOG_LEVEL=0|1`.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return
    with native_notes_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()


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
