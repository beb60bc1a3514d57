"""The template-matching backend: crops found inside their originals (both
ways), unrelated photos rejected, degenerate inputs, agreement with OpenCV's
matchTemplate, and the candidate search. Photos come from scikit-image's
bundled sample images (no data files)."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from skimage import data

from clusterimg.features import get_method
from conftest import pair_scores as scores
from clusterimg.features.tm import SCALES, TM, centre_template, detail


def gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def photos() -> list[np.ndarray]:
    """Unrelated grayscale photos of several sizes and aspects."""
    return [data.camera(), gray(data.astronaut()), gray(data.coffee()), gray(data.chelsea()),
            gray(data.rocket()), data.coins(), data.moon(), data.clock(), data.brick(),
            gray(data.immunohistochemistry())]


def crop(image: np.ndarray, keep: float, where: float) -> np.ndarray:
    """A crop keeping ``keep`` of each side; ``where`` in [0, 1] places it
    from the top-left (0) to the bottom-right (1) corner."""
    h, w = image.shape[:2]
    ch, cw = int(h * keep), int(w * keep)
    y, x = int((h - ch) * where), int((w - cw) * (1 - where))
    return np.ascontiguousarray(image[y:y + ch, x:x + cw])


def border(image: np.ndarray, fraction: float, value: int) -> np.ndarray:
    pad = int(min(image.shape[:2]) * fraction)
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=value)


EDITS = {
    "crop_15": lambda im: crop(im, 0.85, 0.3),
    "crop_10_corner": lambda im: crop(im, 0.9, 1.0),
    "bigcrop_40": lambda im: crop(im, 0.6, 0.5),
    "bigcrop_35_corner": lambda im: crop(im, 0.65, 0.0),
    "border": lambda im: border(im, 0.07, 90),
    "resize": lambda im: cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA),
}


@pytest.fixture(scope="module")
def method():
    return get_method("tm")


def test_identical_scores_one(method):
    images = photos()[:3]
    s = scores(method, images, [(0, 0), (1, 1), (2, 2)])
    assert np.allclose(s, 1.0, atol=1e-4)


def test_unrelated_photos_score_below_threshold(method):
    images = photos()
    n = len(images)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    s = scores(method, images, pairs)
    assert s.max() < method.default_threshold, dict(zip(pairs, np.round(s, 3)))


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_crops_are_found_inside_their_originals(method, edit):
    originals = photos()[:5]
    images = originals + [EDITS[edit](im) for im in originals]
    k = len(originals)
    forward = scores(method, images, [(a, a + k) for a in range(k)])
    backward = scores(method, images, [(a + k, a) for a in range(k)])
    assert forward.min() >= method.default_threshold, np.round(forward, 3)
    assert np.allclose(forward, backward)  # both directions are tried, whichever order


def test_matches_opencv_match_template():
    """The FFT scoring equals cv2.matchTemplate(TM_CCOEFF_NORMED), best over
    scales and both directions, on the high-passed thumbnails."""
    method = get_method("tm")
    a, b = data.camera(), crop(data.camera(), 0.7, 0.2)
    c = gray(data.coffee())
    thumbs = [method.extract(im) for im in (a, b, c)]
    stacked = method.stack(thumbs)
    ours = method.score(stacked, np.array([0, 0, 1]), np.array([1, 2, 2]))

    def reference(x, y):
        best = -1.0
        for t, im in ((x, y), (y, x)):
            for r in SCALES:
                template = centre_template(detail(thumbs[t].astype(np.float32)), r)
                res = cv2.matchTemplate(detail(thumbs[im].astype(np.float32)), template, cv2.TM_CCOEFF_NORMED)
                best = max(best, float(res.max()))
        return max(best, 0.0)

    expected = [reference(0, 1), reference(0, 2), reference(1, 2)]
    assert np.allclose(ours, expected, atol=1e-3)


def test_candidates_propose_the_cropped_partner():
    method = get_method("tm", candidates=3)
    originals = photos()
    names = sorted(EDITS)
    edited = [EDITS[names[k % len(names)]](im) for k, im in enumerate(originals)]
    images = originals + edited
    stacked = method.stack([method.extract(im) for im in images])
    i, j = method.candidates(stacked, method.default_threshold)
    proposed = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    k = len(originals)
    missing = [names[a % len(names)] for a in range(k) if (a, a + k) not in proposed]
    assert not missing
    assert len(proposed) < len(images) * (len(images) - 1) // 2
    again = method.candidates(method.stack([method.extract(im) for im in images]), 0.5)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])  # deterministic


def test_options_and_pickle():
    method = get_method("tm", size=64)
    assert method.extract(data.astronaut()).shape == (64, 64)
    assert method.decode_side == 128
    copy = pickle.loads(pickle.dumps(method))
    assert isinstance(copy, TM) and copy.params == method.params
    with pytest.raises(ValueError):
        get_method("tm", size=4)
    with pytest.raises(ValueError):
        get_method("tm", candidates=0)


def test_large_searches_compute_template_spectra_per_block_with_the_same_scores(monkeypatch):
    """Above KEEP_TEMPLATES_MAX images the stack keeps no template spectra (flat
    memory); scoring must not change."""
    import clusterimg.features.tm as tm_module

    rng = np.random.default_rng(5)
    method = get_method("tm")
    features = [rng.integers(0, 256, (48, 48)).astype(np.uint8) for _ in range(12)]
    i, j = rng.integers(0, 12, 40), rng.integers(0, 12, 40)
    kept = method.stack(features)
    assert kept["templates"] is not None
    monkeypatch.setattr(tm_module, "KEEP_TEMPLATES_MAX", 5)
    lean = method.stack(features)
    assert lean["templates"] is None
    assert np.array_equal(method.score(kept, i, j), method.score(lean, i, j))
