"""minhash backend: corner tokens, MinHash scores, LSH candidates."""
import cv2
import numpy as np
from skimage import data

from clusterimg.features import get_method
from clusterimg.features.minhash import corner_tokens
from clusterimg.engine.search import find_pairs


def gray(image):
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


PHOTOS = [gray(getattr(data, name)()) for name in ("camera", "astronaut", "coffee", "chelsea", "rocket")]
METHOD = get_method("minhash")


def resized(img, scale=0.6):
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def shifted(img, pixels=3):
    """The scene moved by a few pixels (edge replicated), as a re-framed copy."""
    return cv2.copyMakeBorder(img[:-pixels, :-pixels], pixels, 0, pixels, 0, cv2.BORDER_REPLICATE)


def scores(images, i, j):
    stacked = METHOD.stack([METHOD.extract(img) for img in images])
    return METHOD.score(stacked, np.asarray(i), np.asarray(j))


def test_identical_scores_one_and_edits_stay_above_threshold():
    for img in PHOTOS:
        s = scores([img, img, resized(img), shifted(img)], [0, 0, 0], [1, 2, 3])
        assert s[0] == 1.0
        assert np.all(s[1:] >= METHOD.default_threshold), s


def test_unrelated_photos_score_below_threshold():
    n = len(PHOTOS)
    i, j = np.triu_indices(n, 1)
    assert np.all(scores(PHOTOS, i, j) < METHOD.default_threshold)


def test_blank_and_one_pixel_images_score_zero():
    blank, dot = np.full((60, 90), 200, np.uint8), np.zeros((1, 1), np.uint8)
    images = [blank, dot, PHOTOS[0], blank]
    assert len(METHOD.tokens(blank)) == 0
    assert np.all(scores(images, [0, 1, 0, 1], [2, 2, 3, 3]) == 0.0)  # even blank against blank
    stacked = METHOD.stack([METHOD.extract(img) for img in images])
    i, j = METHOD.candidates(stacked, 0.3)
    assert not set(i.tolist()) & {0, 1, 3} and not set(j.tolist()) & {0, 1, 3}


def test_tokens_are_grid_cells_and_tolerate_small_moves():
    corners = np.array([[10, 10], [11, 12], [100, 50]])
    plain = corner_tokens(corners, 192, 24, neighbours=False)
    assert plain.dtype == np.int64 and set(plain.tolist()) == {1 * 24 + 1, 12 * 24 + 6}
    # a corner right by a cell border, moved across it, keeps a shared token
    a = corner_tokens(np.array([[15, 40]]), 192, 24, neighbours=True)
    b = corner_tokens(np.array([[16, 40]]), 192, 24, neighbours=True)
    assert set(a.tolist()) & set(b.tolist())


def test_lsh_candidates_find_the_near_duplicates():
    images = []
    for img in PHOTOS:
        images += [img, resized(img), shifted(img)]
    stacked = METHOD.stack([METHOD.extract(img) for img in images])
    t = METHOD.default_threshold
    found = find_pairs(METHOD, stacked, len(images), t)
    full = find_pairs(METHOD, stacked, len(images), t, exhaustive=True)
    found_set = set(zip(found[0].tolist(), found[1].tolist()))
    assert found_set <= set(zip(full[0].tolist(), full[1].tolist()))
    for k in range(0, len(images), 3):
        assert {(k, k + 1), (k, k + 2)} <= found_set
    assert all(a // 3 == b // 3 for a, b in found_set)  # nothing across photos


def test_feature_is_a_uint64_signature():
    f = METHOD.extract(PHOTOS[0])
    assert f.dtype == np.uint64 and f.shape == (METHOD.params["num_perm"],)
