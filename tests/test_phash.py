"""phash backend: hash kinds, rotation/mirror scoring, exact candidate search."""
import cv2
import numpy as np
import pytest
from skimage import data

from clusterimg.features import get_method
from clusterimg.features.phash import HASH_KINDS, PHash
from clusterimg.engine.search import find_pairs
from conftest import make_photo, write_photo


def gray(image):
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


PHOTOS = {name: gray(getattr(data, name)()) for name in ("camera", "astronaut", "coffee", "chelsea", "rocket")}


def resized(img, scale=0.5):
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def jpeg(img, quality=40):
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def toned(img):
    return np.clip(img.astype(np.float32) * 0.8 + 25, 0, 255).astype(np.uint8)


def pair_score(method, a, b):
    stacked = method.stack([method.extract(method.decode_like(a)), method.extract(method.decode_like(b))])
    return float(method.score(stacked, np.array([0]), np.array([1]))[0])


def decode_like(self, img):
    """What decode() would give: longest side at most decode_side."""
    h, w = img.shape[:2]
    if max(h, w) <= self.decode_side:
        return img
    s = self.decode_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


PHash.decode_like = decode_like
CONFIGS = [dict(hash=k) for k in HASH_KINDS] + [dict(hash=k, rotations=True) for k in HASH_KINDS]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_identical_edited_and_unrelated(options):
    method = get_method("phash", **options)
    t = method.default_threshold
    for name, img in PHOTOS.items():
        assert pair_score(method, img, img) == 1.0
        for edit in (resized, jpeg, toned):
            assert pair_score(method, img, edit(img)) >= t, (name, edit.__name__)
    names = list(PHOTOS)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert pair_score(method, PHOTOS[names[a]], PHOTOS[names[b]]) < t, (names[a], names[b])


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_rotations_option_matches_rotated_and_mirrored_copies(kind):
    plain, turning = get_method("phash", hash=kind), get_method("phash", hash=kind, rotations=True)
    for img in PHOTOS.values():
        for copy in (np.rot90(img), np.rot90(img, 2), np.rot90(img, 3), np.fliplr(img), np.flipud(img)):
            copy = np.ascontiguousarray(copy)
            assert pair_score(turning, img, copy) >= turning.default_threshold
            assert pair_score(turning, copy, img) == pair_score(turning, img, copy)  # symmetric
    # without the option a mirrored camera is another picture
    camera = PHOTOS["camera"]
    assert pair_score(plain, camera, np.ascontiguousarray(np.fliplr(camera))) < plain.default_threshold


@pytest.mark.parametrize("options", [{}, {"rotations": True}, {"hash": "dhash", "rotations": True}])
def test_blank_and_one_pixel_images(options):
    method = get_method("phash", **options)
    blank, dot = np.full((50, 80), 128, np.uint8), np.zeros((1, 1), np.uint8)
    for odd in (blank, dot):
        for img in PHOTOS.values():
            assert pair_score(method, odd, img) < method.default_threshold


@pytest.mark.parametrize("options", [{}, {"rotations": True}, {"hash": "ahash", "hash_size": 16}])
def test_candidate_search_is_exact(options):
    """Candidates + scoring find exactly the pairs that scoring every pair finds."""
    method = get_method("phash", **options)
    images = []
    for img in PHOTOS.values():
        images += [img, jpeg(img), np.ascontiguousarray(np.rot90(img)), toned(resized(img, 0.7))]
    stacked = method.stack([method.extract(method.decode_like(i)) for i in images])
    for floor in (0.75, method.default_threshold, 0.9):
        fast = find_pairs(method, stacked, len(images), floor)
        full = find_pairs(method, stacked, len(images), floor, exhaustive=True)
        assert set(zip(fast[0].tolist(), fast[1].tolist())) == set(zip(full[0].tolist(), full[1].tolist()))


def test_options_and_defaults():
    by_name = {o.name: o for o in PHash.options}
    assert by_name["hash"].choices == HASH_KINDS  # plain data: backends import no click
    assert by_name["rotations"].type is bool and by_name["rotations"].default is False
    assert PHash.default_threshold == get_method("phash").default_threshold == 0.8
    assert get_method("phash", hash="dhash").default_threshold != 0.8  # each hash its own calibration
    assert get_method("phash", rotations=True).extract(PHOTOS["camera"]).shape == (8, 1)
    assert get_method("phash", hash_size=16).extract(PHOTOS["camera"]).shape == (4,)
    with pytest.raises(ValueError):
        get_method("phash", hash="whash", hash_size=12)
    with pytest.raises(ValueError):
        get_method("phash", hash="md5")


def test_a_chunk_is_hashed_as_each_image_alone():
    method = PHash()
    images = [np.asarray(make_photo(seed, (200 + 7 * seed, 150)).convert("L")) for seed in range(12)]
    one_by_one = np.stack([method.extract(im) for im in images])
    assert np.array_equal(np.stack(method.extract_many(images)), one_by_one)
    assert len({tuple(h) for h in one_by_one}) == 12  # distinct photos, distinct hashes


def test_threads_extract_the_same_features_in_the_same_order(tmp_path):
    from clusterimg.engine.extract import extract_features

    files = [str(write_photo(tmp_path / f"{k:02d}.jpg", make_photo(k % 9))) for k in range(40)]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    files.insert(17, str(tmp_path / "bad.jpg"))
    method = PHash()
    assert method.extract_in_threads
    serial = extract_features(method, files, workers=1)
    threaded = extract_features(method, files, workers=2)
    assert [r for _, r in threaded] == [r for _, r in serial]
    assert threaded[17][0] is None and threaded[17][1]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(serial, threaded) if a is not None)
