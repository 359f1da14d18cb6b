"""What a run's numbers depend on besides its config, seed and data: the installed versions, the
lock they were meant to come from, and the CPU's instruction sets.

Plain Python (importlib.metadata, the lock's TOML, /proc/cpuinfo), so the facts are gathered in
milliseconds and `chimuf compare` can set two runs' facts side by side without TensorFlow. What
only TensorFlow can say (GPUs, the kernels oneDNN picked, op determinism) is in chimuf.ml.machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path

from chimuf.core.results import LockInfo
from chimuf.version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# /proc/cpuinfo flag → the name people use, for the instruction sets oneDNN chooses kernels by.
CPU_FEATURES = (
    ("avx2", "AVX2"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX-512 BF16"), ("avx512_fp16", "AVX-512 FP16"), ("amx_tile", "AMX"),
    ("amx_bf16", "AMX-BF16"), ("amx_int8", "AMX-INT8"), ("amx_fp16", "AMX-FP16"),
    ("asimd", "NEON"), ("sve", "SVE"), ("sve2", "SVE2"),  # Arm
)

# Where the lock is, when chimuf runs from a checkout (or a nox session says so).
LOCK_ENV = "CHIMUF_LOCK"


def normalize(name: str) -> str:
    """A distribution name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- installed versions ------------------------------------------------------------------------


def installed_dependencies(root: str = "chimuf") -> dict[str, str]:
    """name → version of every installed distribution `root` needs, directly or through another.

    Extras are not followed (a dev tool does not change a number); a requirement whose marker
    excludes this Python is simply not installed, so it is not listed either.
    """
    found: dict[str, str] = {}
    todo = [root]
    while todo:
        name = normalize(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" in requirement.replace("extra==", "extra =="):
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match:
                todo.append(match.group(1))
    found.pop(normalize(root), None)
    return dict(sorted(found.items()))


def versions_digest(packages: dict[str, str]) -> str:
    """SHA-256 over `name==version` lines and the Python version: one value to compare installs by."""
    lines = [f"python=={platform.python_version()}", *(f"{k}=={v}" for k, v in sorted(packages.items()))]
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# --- the lock ----------------------------------------------------------------------------------


def find_lock() -> Path | None:
    """$CHIMUF_LOCK, else the uv.lock of the checkout chimuf runs from; None for a plain install."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    checkout = Path(__file__).resolve().parents[2]  # chimuf/core/environment.py → the checkout
    lock = checkout / "uv.lock"
    return lock if lock.is_file() and (checkout / "pyproject.toml").is_file() else None


def lock_info(path: Path | None, installed: dict[str, str]) -> LockInfo | None:
    """The lock's digest and every installed dependency whose version the lock does not pin."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
        locked = lock_versions(tomllib.loads(data.decode("utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return LockInfo(str(path), "", [f"the lock could not be read: {exc}"])
    mismatches = []
    for name, version in installed.items():
        pinned = locked.get(name)
        if pinned is None:
            mismatches.append(f"{name} {version}: not in the lock")
        elif version not in pinned:
            mismatches.append(f"{name} {version}: the lock pins {' or '.join(sorted(pinned))}")
    return LockInfo(str(path), hashlib.sha256(data).hexdigest(), mismatches)


def lock_versions(lock: dict) -> dict[str, set[str]]:
    """name → the versions uv.lock pins (more than one where it forks by Python version)."""
    pinned: dict[str, set[str]] = {}
    for package in lock.get("package", []):
        if "name" in package and "version" in package:
            pinned.setdefault(normalize(package["name"]), set()).add(str(package["version"]))
    return pinned


# --- the CPU -----------------------------------------------------------------------------------


@functools.cache
def read_cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none: macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith(("model name", "Model", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first CPU's feature flags (`flags` on x86, `Features` on Arm)."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_features(flags: set[str]) -> list[str]:
    """The instruction sets of CPU_FEATURES this CPU has, by their common names."""
    return [label for flag, label in CPU_FEATURES if flag in flags]



def hardware_summary() -> str:
    """The CPU, its logical core count and the operating system, in one line."""
    return (f"{cpu_model(read_cpuinfo())}, {os.cpu_count()} logical CPUs, "
            f"{platform.system()} {platform.release()}")


# --- which chimuf made a run -------------------------------------------------------------------

# The packages a run's summary names (the run facts list every installed dependency).
HEADLINE_PACKAGES = ("tensorflow", "keras", "keras-tuner", "tf-keras-vis", "numpy", "scikit-learn",
                     "cleanlab", "pillow", "matplotlib", "pypandoc-binary", "typst")


def headline_versions(installed: dict[str, str]) -> dict[str, str]:
    """Python and HEADLINE_PACKAGES' versions, from `installed` (installed_dependencies)."""
    return {"python": platform.python_version(),
            **{name: installed.get(normalize(name), "not installed") for name in HEADLINE_PACKAGES}}


def provenance(packages_digest: str) -> dict[str, str]:
    """What every stage of a run was made by: chimuf's version and the installed packages' digest.

    The engine adds it to each stage's inputs, so a stage made by another chimuf or other packages
    is redone rather than reused beside this one's (docs/layout.md, "Provenance", says why)."""
    return {"chimuf": __version__, "packages": packages_digest}


def source_commit(timeout_s: float = 5.0) -> tuple[str, bool]:
    """(commit, dirty) of the git checkout chimuf runs from; ("", False) for an installed chimuf or
    where git is missing or slow."""
    checkout = Path(__file__).resolve().parents[2]  # chimuf/core/environment.py → the checkout
    if not (checkout / ".git").exists() or not (checkout / "pyproject.toml").is_file():
        return "", False
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                                timeout=timeout_s, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout,
                                capture_output=True, text=True, timeout=timeout_s, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(status.strip())


# --- the process environment, set for a block and restored ------------------------------------


@contextlib.contextmanager
def environ_for(values: Mapping[str, str], override: bool = True) -> Iterator[None]:
    """`values` in os.environ inside the block only; whatever each variable held before (or its
    absence) comes back after. With `override=False` a variable the user has set keeps its value."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if override or saved[name] is None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
