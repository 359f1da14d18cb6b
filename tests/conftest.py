"""Shared fixtures: tiny images the tests make themselves, and the real photos when present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chihuahua-muffin"


def make_image(path: Path, size: int = 48, corner: str = "top-left", seed: int = 0,
               mode: str = "RGB", fmt: str | None = None) -> Path:
    """A noisy image with a bright square in one corner: a class signal a tiny CNN can learn."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    q = size // 3
    rows = slice(0, q) if corner.startswith("top") else slice(size - q, size)
    cols = slice(0, q) if corner.endswith("left") else slice(size - q, size)
    pixels[rows, cols] = 230
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_dataset(root: Path, per_class: int = 12, size: int = 48) -> Path:
    """root/{chihuahua,muffin}/*.png: chihuahuas bright top-left, muffins bright bottom-right."""
    for label, corner in (("chihuahua", "top-left"), ("muffin", "bottom-right")):
        for i in range(per_class):
            seed = i if label == "chihuahua" else 1000 + i
            make_image(root / label / f"{label}_{i:03d}.png", size=size, corner=corner, seed=seed)
    return root


@pytest.fixture(scope="session", autouse=True)
def report_project_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Studies and reports the tests run publish their Quarto project here, never into the
    checkout's report/ (which they would find from the repository root; chimuf.report.project)."""
    from chimuf.report.project import PROJECT_ENV

    folder = tmp_path_factory.mktemp("report-project") / "report"
    previous = os.environ.get(PROJECT_ENV)
    os.environ[PROJECT_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(PROJECT_ENV, None)
    else:
        os.environ[PROJECT_ENV] = previous


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real photos not present at {SHARED_DATA}")
    return SHARED_DATA
