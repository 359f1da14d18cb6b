"""What TensorFlow computes on: the GPUs it sees, the CPU kernels oneDNN picked, op determinism.

Two runs with the same lock, config, seed and data give the same numbers on machines of the same
kind. Across kinds they may not: oneDNN chooses its kernels for the most capable instruction set
the CPU has (AVX2, AVX-512, AVX-512 BF16, AMX, ...), and kernels that add in a different order
round differently. oneDNN says which one it chose only through `ONEDNN_VERBOSE`, once, as it
starts, on stdout. chimuf asks it in a child process of its own, in the background (so a study
never waits for TensorFlow to start twice), and keeps the answer in the cache folder, keyed by
the CPU, the TensorFlow version and the oneDNN settings, so each machine is asked once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from chimuf.core import environment
from chimuf.core.results import digest

# Settings that change which kernels oneDNN runs.
ONEDNN_SETTINGS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS",
                   "ONEDNN_DEFAULT_FPMATH_MODE")

# The child: start TensorFlow with oneDNN's verbose log on, run one matmul, keep the `isa:` line.
PROBE = r"""
import json, os, re, subprocess, sys, tempfile
code = "import tensorflow as tf; x = tf.ones((32, 32)); tf.matmul(x, x)"
env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
try:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300).stdout
except (OSError, subprocess.SubprocessError):
    sys.exit(1)  # no answer, nothing cached: the next study asks again
found = re.search(r"^onednn_verbose,(?:[^,\n]*,)*?info,cpu,isa:(.*)$", out, re.M)
isa = found.group(1).strip() if found else "oneDNN did not say (not used by this TensorFlow)"
target = sys.argv[1]
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
with os.fdopen(fd, "w") as handle:
    json.dump({"isa": isa}, handle)
os.replace(tmp, target)
"""

_running: dict[Path, subprocess.Popen[bytes]] = {}


def onednn_settings() -> dict[str, str]:
    return {name: os.environ[name] for name in ONEDNN_SETTINGS if name in os.environ}


def probe_file(cache_dir: Path) -> Path:
    """Where this machine's answer is kept: one file per CPU, TensorFlow version and settings."""
    cpuinfo = environment.read_cpuinfo()
    try:
        tensorflow = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tensorflow = ""
    key = digest({"cpu": environment.cpu_model(cpuinfo), "flags": sorted(environment.cpu_flags(cpuinfo)),
                  "tensorflow": tensorflow, "settings": onednn_settings()})
    return cache_dir / f"onednn-isa-{key[:16]}.json"


def start_onednn_probe(cache_dir: Path) -> Path:
    """Ask oneDNN in the background unless this machine's answer is cached; the answer's file."""
    target = probe_file(cache_dir)
    if target.is_file() or target in _running:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        _running[target] = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(target)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    return target


def onednn_isa(target: Path, wait_s: float = 0.0) -> str:
    """oneDNN's own words for the instruction set it picked; "" while the probe has not answered.

    `wait_s` > 0 waits that long for a probe still running (the study's last write does).
    """
    process = _running.get(target)
    if process is not None and wait_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
    if process is not None and process.poll() is not None:
        _running.pop(target, None)
    try:
        return str(json.loads(target.read_text(encoding="utf-8"))["isa"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


# --- TensorFlow's own facts --------------------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    """A GPU TensorFlow sees: its name and CUDA compute capability (None where not said, e.g. ROCm)."""

    name: str
    compute_capability: tuple[int, int] | None


def gpus() -> list[Gpu]:
    """The GPUs TensorFlow sees, with what decides their precision; [] on a CPU."""
    import tensorflow as tf

    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        cc = details.get("compute_capability")
        found.append(Gpu(str(details.get("device_name", device.name)),
                         (int(cc[0]), int(cc[1])) if cc else None))
    return found


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees, by name ("NVIDIA H100 80GB HBM3"); [] on a CPU."""
    return [gpu.name for gpu in gpus()]


def enable_determinism(on: bool) -> None:
    """train.deterministic: TensorFlow's op determinism on (ops without a deterministic kernel then
    raise instead of varying); off leaves TensorFlow's default (and $TF_DETERMINISTIC_OPS) alone."""
    if on:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def determinism_enabled() -> bool:
    """Whether TensorFlow's op determinism is on in this process."""
    try:
        from tensorflow.python.framework import config as tf_config

        return bool(tf_config.is_op_determinism_enabled())
    except (ImportError, AttributeError):  # the private switch moved: fall back on the public one
        return os.environ.get("TF_DETERMINISTIC_OPS", "").lower() in ("1", "true")

