"""What ssim and tm promise alike: flat images share nothing with photos, and
an empty search neither scores nor proposes anything."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from clusterimg.features import get_method

# the diagonal tolerance: tm's FFT correlation is exact only to ~1e-4
DIAGONAL = {"ssim": None, "tm": 1e-4}


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_blank_and_one_pixel_images(name):
    method = get_method(name)
    images = [np.zeros((1, 1), np.uint8), np.full((40, 60), 255, np.uint8), np.zeros((300, 200), np.uint8),
              data.camera(), data.moon()]
    stacked = method.stack([method.extract(im) for im in images])
    i, j = np.triu_indices(len(images), k=0)
    s = method.score(stacked, i.astype(np.int64), j.astype(np.int64))
    table = dict(zip(zip(i.tolist(), j.tolist()), s))
    for flat in (0, 1, 2):
        for photo in (3, 4):
            assert table[(flat, photo)] == 0.0  # no structure, nothing in common
    assert table[(0, 2)] == pytest.approx(1.0)  # two black frames: same level
    assert table[(1, 2)] < 0.01  # white vs black
    assert all(table[(k, k)] == pytest.approx(1.0, abs=DIAGONAL[name]) for k in range(len(images)))


@pytest.mark.parametrize("name", sorted(DIAGONAL))
def test_empty_stack_and_candidates(name):
    method = get_method(name)
    stacked = method.stack([])
    assert len(method.score(stacked, np.empty(0, np.int64), np.empty(0, np.int64))) == 0
    i, j = method.candidates(stacked, 0.5)
    assert len(i) == len(j) == 0
