"""The zip archive of a `.keras` file, read as untrusted input: what is in it, and how big.

Keras extracts whatever an archive holds (assets to the temp folder, the weights into memory) and
trusts the sizes it claims up to 4 GiB. chimuf reads the archive's inventory first and refuses,
before a byte of any member is read:

    any member but config.json, metadata.json and model.weights.h5 (exactly what Keras 3 writes
      for a model without assets), or one of them missing or repeated
    names that are absolute, hold `..` or a backslash, and symlinks (zip external attributes)
    encrypted members, and compression other than stored (what Keras writes) or deflated
    a member above its own size cap, or expanding more than MAX_EXPANSION times, or members
      adding up to more than the caller's cap (what the largest model allowed can need)

Then members are read with their CRC checked (zipfile raises on a mismatch at the end of each
member) into a private folder (tempfile.mkdtemp, mode 0700) under fixed names, never the
archive's; the caller loads from there and removes it (`private_folder`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from chimuf.core.errors import ModelError

CONFIG, METADATA, WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
MEMBERS = (CONFIG, METADATA, WEIGHTS)  # what `model.save("x.keras")` writes (Keras 3.15)
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a real config.json: 8-12 kB (chimuf), 160 kB (MobileNetV2)
MAX_METADATA_BYTES = 64 * 1024  # {"keras_version": ..., "date_saved": ...}: 64 bytes
MAX_JSON_DEPTH = 64  # chimuf's config.json nests 10 deep, MobileNetV2's 11; each nested model adds 4
MAX_EXPANSION = 100  # Keras stores members (1:1); deflated float32 weights shrink by ~10% at most
EXPANSION_FLOOR = 1024 * 1024  # small JSON members may compress well; the ratio applies above this
COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
# What a damaged archive raises while a member is read: zipfile's own errors (bad CRC, bad header),
# a broken deflate stream, a member cut short, an unreadable file.
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
               OSError)
FIX = "use a `.keras` file saved by Keras 3 (`model.save('name.keras')`)"


@dataclass(frozen=True)
class Inventory:
    """An archive's members, checked by name, kind and size claim; nothing read yet."""

    path: Path
    members: dict[str, zipfile.ZipInfo]

    def size_of(self, name: str) -> int:
        return self.members[name].file_size


def read_inventory(path: Path, max_total: int) -> Inventory:
    """The checked member list of the archive at `path`, whose members may add up to `max_total`
    bytes uncompressed; ModelError for anything refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except READ_ERRORS as exc:
        raise ModelError(f"model `{path}` is not a Keras archive ({exc}); {FIX}") from None
    for info in infos:
        check_member(path, info)
    names = [info.filename for info in infos]
    for name in set(names):
        if names.count(name) > 1:
            raise ModelError(f"model `{path}` holds member `{name}` {names.count(name)} times; "
                             f"refused unread; {FIX}")
    if CONFIG not in names:
        raise ModelError(f"model `{path}` is a zip archive without config.json, so not a Keras model "
                         f"file; {FIX}")
    unknown = [name for name in names if name not in MEMBERS]
    if unknown:
        raise ModelError(
            f"model `{path}` holds {shown(unknown)}: a chimuf model archive holds exactly "
            f"{', '.join(MEMBERS)} (assets and other files are refused unread); {FIX}"
        )
    missing = [name for name in MEMBERS if name not in names]
    if missing:
        raise ModelError(f"model `{path}` has no {shown(missing)}; a Keras model archive holds "
                         f"{', '.join(MEMBERS)}; {FIX}")
    total = sum(info.file_size for info in infos)
    if total > max_total:
        raise ModelError(f"model `{path}`: its members add up to {total:,} bytes uncompressed, more than "
                         f"the {max_total:,} the largest model chimuf opens can need; refused unread")
    members = {info.filename: info for info in infos}
    check_size(path, members[CONFIG], MAX_CONFIG_BYTES, "a model's is a few kB")
    check_size(path, members[METADATA], MAX_METADATA_BYTES, "Keras writes 64 bytes")
    return Inventory(path, members)


def check_member(path: Path, info: zipfile.ZipInfo) -> None:
    """One entry of the central directory: its name, kind, encryption, compression, ratio."""
    name = info.filename
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or re.search(r"[\x00-\x1f]|^[A-Za-z]:", name):
        raise ModelError(f"model `{path}` holds a member named {name[:80]!r}, which points outside the "
                         f"archive or is not a plain name; refused unread; {FIX}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"model `{path}`: member `{name}` is a symbolic link; refused unread; {FIX}")
    if info.flag_bits & 0x1:
        raise ModelError(f"model `{path}`: member `{name}` is encrypted; chimuf cannot check it, and "
                         f"Keras never encrypts; {FIX}")
    if info.compress_type not in COMPRESSIONS:
        raise ModelError(f"model `{path}`: member `{name}` uses zip compression method "
                         f"{info.compress_type}; chimuf reads {' and '.join(COMPRESSIONS.values())} "
                         f"members only (Keras stores them); {FIX}")
    if info.file_size > EXPANSION_FLOOR and info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        raise ModelError(
            f"model `{path}`: member `{name}` claims {info.file_size:,} bytes from "
            f"{info.compress_size:,} stored, a ratio above {MAX_EXPANSION}:1 (a decompression bomb); "
            f"refused unread; {FIX}"
        )


def check_size(path: Path, info: zipfile.ZipInfo, limit: int, usual: str) -> None:
    if info.file_size > limit:
        raise ModelError(f"model `{path}`: {info.filename} claims {info.file_size:,} bytes, more than "
                         f"the {limit:,} chimuf reads ({usual}); refused unread")


def shown(names: list[str]) -> str:
    listed = ", ".join(f"`{n[:60]!s}`" for n in names[:3])
    return listed + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# --- reading members ------------------------------------------------------------------------------


def parse_json(inventory: Inventory, name: str, data: bytes) -> Any:
    """Member `name` (its bytes, `data`) parsed as JSON, its nesting depth checked first."""
    path = inventory.path
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"model `{path}`: {name} is not UTF-8 text ({exc}); {FIX}") from None
    depth = nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ModelError(f"model `{path}`: {name} nests {depth:,} levels deep; a Keras model's nests "
                         f"about 10, chimuf reads at most {MAX_JSON_DEPTH}; {FIX}")
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and numbers of more than 4300 digits
        raise ModelError(f"model `{path}`: {name} is not valid JSON ({exc}); {FIX}") from None


def read_member(inventory: Inventory, name: str) -> bytes:
    """The bytes of a small member, CRC checked."""
    try:
        with zipfile.ZipFile(inventory.path) as archive, archive.open(inventory.members[name]) as member:
            return member.read(inventory.size_of(name) + 1)
    except READ_ERRORS as exc:
        raise damaged(inventory.path, name, exc) from None


def extract_member(inventory: Inventory, name: str, target: Path, limit: int) -> None:
    """Copy member `name` to `target` in chunks, CRC checked, refusing it past `limit` bytes
    (zipfile already stops at the size the archive claims; this is the second fence)."""
    written = 0
    try:
        with (zipfile.ZipFile(inventory.path) as archive, archive.open(inventory.members[name]) as member,
              target.open("xb") as out):
            while chunk := member.read(1024 * 1024):
                written += len(chunk)
                if written > limit:
                    raise ModelError(f"model `{inventory.path}`: {name} holds more than the {limit:,} "
                                     f"bytes it may; refused; {FIX}")
                out.write(chunk)
    except READ_ERRORS as exc:
        raise damaged(inventory.path, name, exc) from None


def damaged(path: Path, name: str, exc: BaseException) -> ModelError:
    return ModelError(f"model `{path}`: member {name} cannot be read ({type(exc).__name__}: {exc}); the "
                      f"file is damaged; {FIX}")


STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
BRACKETS = re.compile(r"[^\[\]{}]+")
STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """How deep the arrays and objects of JSON `text` nest, counted without parsing it (so a
    100 000-deep file costs a scan, not a RecursionError)."""
    brackets = BRACKETS.sub("", STRING.sub("", text))
    return max(accumulate(STEP[ch] for ch in brackets), default=0)


# --- the private folder ---------------------------------------------------------------------------


@contextlib.contextmanager
def private_folder() -> Iterator[Path]:
    """A folder only this user can read (mkdtemp makes it 0700), removed on exit however the
    block ends."""
    folder = Path(tempfile.mkdtemp(prefix="chimuf-model-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
