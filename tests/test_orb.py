"""The ORB backend: edits it must survive, images it must reject, degenerate
inputs, and the candidate search. Photos come from scikit-image's bundled
sample images (no data files, no network)."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from skimage import data

from clusterimg.features import get_method
from clusterimg.features.orb import ORB


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def crop_keep(image: np.ndarray, keep: float) -> np.ndarray:
    """The central-right part keeping ``keep`` of each side (a 35% cut for 0.65)."""
    h, w = image.shape[:2]
    ch, cw = int(h * keep), int(w * keep)
    return np.ascontiguousarray(image[h - ch:, (w - cw) // 3:(w - cw) // 3 + cw])


def perspective(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0.10 * w, 0.05 * h], [0.93 * w, 0.10 * h], [0.88 * w, 0.92 * h], [0.06 * w, 0.95 * h]])
    return cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)


EDITS = {
    "rot90": lambda im: np.ascontiguousarray(np.rot90(im)),
    "rot180": lambda im: np.ascontiguousarray(im[::-1, ::-1]),
    "mirror": lambda im: np.ascontiguousarray(im[:, ::-1]),
    "crop35": lambda im: crop_keep(im, 0.65),
    "perspective": perspective,
    "small": lambda im: cv2.resize(im, (im.shape[1] * 2 // 5, im.shape[0] * 2 // 5), interpolation=cv2.INTER_AREA),
}


@pytest.fixture(scope="module")
def method() -> ORB:
    return get_method("orb")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return gray(data.astronaut())


@pytest.fixture(scope="module")
def others() -> list[np.ndarray]:
    """Unrelated photos, textured ones included (brick, gravel, cells)."""
    return [data.camera(), gray(data.coffee()), gray(data.chelsea()), gray(data.rocket()), data.brick(),
            data.gravel(), gray(data.immunohistochemistry()), data.coins(), data.moon()]


def pair(method: ORB, a: np.ndarray, b: np.ndarray) -> float:
    stacked = method.stack([method.extract(a), method.extract(b)])
    return float(method.score(stacked, np.array([0]), np.array([1]))[0])


def test_identical_image_scores_one(method, photo):
    assert pair(method, photo, photo.copy()) == 1.0


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_copy_scores_above_default_threshold(method, photo, name):
    assert pair(method, photo, EDITS[name](photo)) >= method.default_threshold


def test_unrelated_images_score_below_default_threshold(method, photo, others):
    feats = [method.extract(im) for im in [photo, *others]]
    stacked = method.stack(feats)
    i, j = np.triu_indices(len(feats), k=1)
    scores = method.score(stacked, i.astype(np.int64), j.astype(np.int64))
    assert scores.max() < method.default_threshold


def test_score_is_symmetric_and_rgb_input_works(method, photo):
    a, b = method.extract(photo), method.extract(data.astronaut()[:, ::-1].copy())
    stacked = method.stack([a, b])
    forward = method.score(stacked, np.array([0]), np.array([1]))
    backward = method.score(stacked, np.array([1]), np.array([0]))
    assert forward[0] == backward[0] >= method.default_threshold


@pytest.mark.parametrize("blank", [np.zeros((1, 1), np.uint8), np.full((200, 300), 128, np.uint8),
                                   np.zeros((3, 500), np.uint8)])
def test_images_without_keypoints_score_zero(method, photo, blank):
    feature = method.extract(blank)
    assert feature["desc"].shape == (0, 32)
    stacked = method.stack([feature, method.extract(photo), method.extract(blank)])
    scores = method.score(stacked, np.array([0, 0, 1]), np.array([1, 2, 2]))
    assert scores.tolist() == [0.0, 0.0, 0.0]
    method.candidates(stacked, method.default_threshold)  # no crash


def test_features_are_plain_arrays_and_method_pickles(method, photo):
    feature = method.extract(photo)
    assert all(isinstance(v, np.ndarray) for v in feature.values())
    clone = pickle.loads(pickle.dumps(method))
    assert clone.params == method.params


def test_candidates_propose_the_true_partners(photo, others):
    method = get_method("orb", candidates=3)
    images = [photo, *[EDITS[name](photo) for name in sorted(EDITS)], *others]
    stacked = method.stack([method.extract(im) for im in images])
    i, j, rank = method.candidates(stacked, method.default_threshold)
    # each image's candidates come nearest first, ranked 0, 1, 2
    for image in np.unique(i):
        assert rank[i == image].tolist() == list(range((i == image).sum()))
    proposed = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    assert all((0, k) in proposed for k in range(1, len(EDITS) + 1))
    # deterministic: the same pairs on a second call and on a fresh stack
    again = method.candidates(method.stack([method.extract(im) for im in images]), 0.5)
    assert np.array_equal(i, again[0]) and np.array_equal(j, again[1])


def test_options_are_checked():
    with pytest.raises(ValueError):
        get_method("orb", orb_features=10)
    with pytest.raises(ValueError):
        get_method("orb", candidates=0)
    assert get_method("orb", orb_side=256).decode_side == 256
