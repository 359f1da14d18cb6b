"""Start TensorFlow without its C++ start-up chatter on the user's terminal.

TensorFlow 2.20+ logs through Abseil, which writes everything to stderr until its logging is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot hide the oneDNN and CUDA-probing notes printed
while TensorFlow loads and looks for devices. chimuf therefore loads TensorFlow once, at the
edge, with file descriptor 2 pointed at a temporary file, and replays whatever is not one of
those notes: real errors still reach the user.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

# Abseil's INFO and WARNING lines ("I0000 00:00:1795887742.120600  10328 port.cc:153] ..."), its
# "not initialised" banner, and the one ERROR every machine without a GPU gets.
NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|E\d{4} \d\d:\d\d:[\d.]+ +\d+ cuda_[a-z_]+\.cc:\d+\] failed call to cuInit)"
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
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
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
