"""The SSIM backend: the edits it must survive, images it must reject,
degenerate inputs, agreement with scikit-image, and the candidate search.
Photos come from scikit-image's bundled sample images (no data files)."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from clusterimg.features import get_method
from conftest import pair_scores as scores
from clusterimg.features.ssim import SSIM


def gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def photos() -> dict[str, np.ndarray]:
    """Unrelated grayscale photos of several sizes and aspects."""
    return {
        "camera": data.camera(),
        "astronaut": gray(data.astronaut()),
        "coffee": gray(data.coffee()),
        "chelsea": gray(data.chelsea()),
        "rocket": gray(data.rocket()),
        "coins": data.coins(),
        "moon": data.moon(),
        "clock": data.clock(),
        "horse": data.horse().astype(np.uint8) * 255,
        "brick": data.brick(),
    }


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


EDITS = {
    "resize": lambda im: cv2.resize(im, (im.shape[1] * 2 // 5, im.shape[0] * 2 // 5), interpolation=cv2.INTER_AREA),
    "jpeg": lambda im: jpeg(im, 15),
    "brighter": lambda im: np.clip(im.astype(np.float32) * 1.25 + 10, 0, 255).astype(np.uint8),
    "low_contrast": lambda im: np.clip((im.astype(np.float32) - 128) * 0.7 + 128, 0, 255).astype(np.uint8),
    "blur": lambda im: cv2.GaussianBlur(im, (0, 0), 2.0),
}


@pytest.fixture(scope="module")
def method():
    return get_method("ssim")


def test_identical_scores_one(method):
    images = list(photos().values())[:3]
    s = scores(method, images, [(0, 0), (1, 1), (2, 2)])
    assert np.allclose(s, 1.0, atol=1e-6)


def test_unrelated_photos_score_below_threshold(method):
    images = list(photos().values())
    n = len(images)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    s = scores(method, images, pairs)
    assert s.max() < method.default_threshold, dict(zip(pairs, np.round(s, 3)))


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_score_above_threshold(method, edit):
    originals = [photos()[k] for k in ("camera", "astronaut", "coffee", "chelsea", "rocket")]
    images = originals + [EDITS[edit](im) for im in originals]
    k = len(originals)
    s = scores(method, images, [(a, a + k) for a in range(k)])
    assert s.min() >= method.default_threshold, np.round(s, 3)


def test_scores_are_symmetric_and_in_range(method):
    images = list(photos().values())[:5]
    pairs = [(a, b) for a in range(5) for b in range(5)]
    s = scores(method, images, pairs).reshape(5, 5)
    assert np.allclose(s, s.T)
    assert s.min() >= 0.0 and s.max() <= 1.0


@pytest.mark.parametrize("size", [32, 64])
def test_vectorised_ssim_agrees_with_skimage(size):
    method = get_method("ssim", size=size)
    images = list(photos().values())[:6] + [EDITS["jpeg"](data.camera())]
    thumbs = [method.extract(im) for im in images]
    stacked = method.stack(thumbs)
    i, j = np.triu_indices(len(thumbs), k=1)
    ours = method.score(stacked, i.astype(np.int64), j.astype(np.int64))
    reference = [
        structural_similarity(thumbs[a], thumbs[b], gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255)
        for a, b in zip(i, j)
    ]
    assert np.allclose(ours, np.clip(reference, 0, 1), atol=1e-3)


def test_candidates_propose_the_true_partner():
    method = get_method("ssim", candidates=3)
    originals = list(photos().values())
    edited = [EDITS[sorted(EDITS)[k % len(EDITS)]](im) for k, im in enumerate(originals)]
    images = originals + edited
    stacked = method.stack([method.extract(im) for im in images])
    i, j = method.candidates(stacked, method.default_threshold)
    proposed = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    k = len(originals)
    assert all((a, a + k) in proposed for a in range(k))
    assert len(proposed) < len(images) * (len(images) - 1) // 2  # fewer than all pairs
    again = method.candidates(method.stack([method.extract(im) for im in images]), 0.5)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])  # deterministic


def test_rgb_input_and_options():
    method = get_method("ssim", size=24)
    assert method.extract(data.astronaut()).shape == (24, 24)
    assert method.decode_side == 48
    with pytest.raises(ValueError):
        get_method("ssim", size=8)
    with pytest.raises(ValueError):
        get_method("ssim", candidates=0)


def test_picklable():
    method = get_method("ssim", size=40)
    copy = pickle.loads(pickle.dumps(method))
    assert isinstance(copy, SSIM) and copy.params == method.params and copy.decode_side == 80
