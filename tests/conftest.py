"""Shared fixtures: small synthetic photos, made in code so the tests need no
data files. Each seed gives a distinct scene (gradient + shapes + texture)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter


def make_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([
        (x * rng.uniform(0.2, 1.0) + y * rng.uniform(-0.5, 0.5) + rng.uniform(0, 255)) % 256
        for _ in range(3)
    ], axis=2)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(15, w // 2)), y0 + int(rng.integers(15, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    noise = rng.normal(0, 12, (h, w, 3))
    arr = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).filter(ImageFilter.GaussianBlur(0.6))


def write_photo(path: Path, im: Image.Image, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **save)
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Three shots with near-duplicate copies, and four unrelated photos:
    a/ holds shot 1 and a resized copy, b/ shot 2 with a recompressed copy and
    a brighter one, shot 3 in two folders under the same file name."""
    root = tmp_path / "photos"
    one, two, three = make_photo(1), make_photo(2), make_photo(3)
    write_photo(root / "a" / "one.jpg", one, quality=92)
    write_photo(root / "a" / "one_small.jpg", one.resize((160, 120)), quality=85)
    write_photo(root / "b" / "two.png", two)
    write_photo(root / "b" / "two_q30.jpg", two, quality=30)
    write_photo(root / "b" / "two_bright.jpg", two.point(lambda v: min(255, int(v * 1.15))), quality=90)
    write_photo(root / "c" / "three.jpg", three, quality=90)
    write_photo(root / "d" / "three.jpg", three.resize((300, 225)), quality=80)
    for k in range(4):
        write_photo(root / f"single_{k}.jpg", make_photo(100 + k), quality=90)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep every test's cache out of the user's home and away from other tests."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def pair_scores(method, images, pairs) -> np.ndarray:
    """A backend's scores of (i, j) pairs of decoded images."""
    stacked = method.stack([method.extract(im) for im in images])
    i = np.array([p[0] for p in pairs], dtype=np.int64)
    j = np.array([p[1] for p in pairs], dtype=np.int64)
    return method.score(stacked, i, j)
