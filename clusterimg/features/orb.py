"""ORB keypoints matched pair by pair and verified geometrically.

The backend for copies that moved pixels around: big crops, rotations by
90/180/270 degrees, mirror images and perspective warps, which defeat global
fingerprints such as phash. Each image becomes up to ``orb_features`` ORB
keypoints (position + 256-bit descriptor) found on a thumbnail whose longest
side is ``orb_side``, both of the image and of its mirror image (ORB is
rotation invariant but not mirror invariant). A pair is matched with a
nearest-neighbour ratio test, a homography is fitted with RANSAC, and the pair
scores only if the fit has enough inliers, a large enough share of the
matches, and a plausible shape (no reflection, bounded zoom and shear, mild
perspective): unrelated textured photos (foliage, star fields) produce a few
dozen chance matches that an unconstrained fit happily accepts.

Matching costs milliseconds per pair, so :meth:`ORB.candidates` proposes, for
each image, its ``candidates`` nearest images by a bag of visual words over
the same descriptors (fixed hashed vocabulary, idf-weighted cosine, mirror
invariant), and only those pairs are verified.
"""
from __future__ import annotations

import zlib

import cv2
import numpy as np

from clusterimg.features.base import Method, Option, candidates_option
from clusterimg.engine.search import top_k_pairs

# A verified pair needs at least this many RANSAC inliers ...
MIN_INLIERS = 12
# ... and at least this share of the ratio-test matches as inliers.
MIN_INLIER_RATIO = 0.25
RATIO_TEST = 0.8  # Lowe's ratio: best match must beat the second best clearly
RANSAC_PIXELS = 5.0  # reprojection tolerance on a thumbnail of ``orb_side``
HOMOGRAPHY_METHOD = cv2.USAC_FAST
# Plausible transforms: zoom between 1/MAX_ZOOM and MAX_ZOOM, axes scaled
# alike within MAX_SHEAR, and a perspective term that changes the local scale
# across the image by at most a factor PERSPECTIVE_MAX.
MAX_ZOOM = 4.0
MAX_SHEAR = 2.0
PERSPECTIVE_MAX = 2.0
# Inliers must spread over the image, not lie in a thin strip: two photos with
# the same caption text ("IMG 01234 holiday 2019") match along it and nowhere
# else. Standard deviation across the narrowest axis, as a share of the side.
MIN_SPREAD = 0.022
# Inliers giving a score of 0.63, as a share of ``orb_features`` (40 of 500).
EVIDENCE_SCALE = 0.08

# Bag-of-words vocabulary: each table reads WORD_BITS fixed descriptor bits as
# a word id. Bits are drawn once with a fixed seed, so the vocabulary never
# depends on the data, the batch or the order of images.
WORD_BITS = 16
WORD_TABLES = 4
_VOCAB_SEED = 20240611


def _vocabulary_bits() -> np.ndarray:
    """(WORD_TABLES, WORD_BITS) distinct bit positions in 0..255."""
    rng = np.random.default_rng(_VOCAB_SEED)
    return rng.permutation(256)[: WORD_TABLES * WORD_BITS].reshape(WORD_TABLES, WORD_BITS)


VOCAB_BITS = _vocabulary_bits()
# Words in more than this share of a batch's images (and in more than
# STOP_WORD_MIN of them) are left out of the candidate search: on the dev
# benchmark this leaves the clusters as they were and scores 13 % fewer
# pairs; on 1,000 photos the search took 0.9 s instead of 3.1 s.
STOP_WORD_SHARE = 0.05
STOP_WORD_MIN = 20


def thumbnail(gray: np.ndarray, side: int) -> np.ndarray:
    """Grayscale image resized (up or down) to longest side ``side``, so that
    resized copies of a photo are seen at the same scale."""
    h, w = gray.shape[:2]
    if max(h, w) == side:  # the decoder made it already
        return gray
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interpolation)


def detect(gray: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(float32 (n, 2) keypoint positions, uint8 (n, 32) descriptors, the
    OpenCV keypoints)."""
    keypoints, descriptors = _orb(features).detectAndCompute(gray, None)
    return _arrays(keypoints, descriptors) + (keypoints,)


def _orb(features: int):
    return cv2.ORB_create(nfeatures=features, fastThreshold=10)


def describe_mirrored(gray: np.ndarray, keypoints, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and descriptors of the mirror image of ``gray``, from the
    keypoints already found on ``gray`` mirrored (x -> w - 1 - x, angle ->
    180 - angle) rather than detected again: the descriptors are those of the
    mirrored patches, at a third of the cost of a second detection."""
    if not keypoints:
        return _arrays((), None)
    w = gray.shape[1]
    flipped = [cv2.KeyPoint(w - 1 - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response, k.octave)
               for k in keypoints]
    flipped, descriptors = _orb(features).compute(np.ascontiguousarray(gray[:, ::-1]), flipped)
    return _arrays(flipped, descriptors)


def _arrays(keypoints, descriptors) -> tuple[np.ndarray, np.ndarray]:
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    points = cv2.KeyPoint_convert(keypoints).astype(np.float32).reshape(-1, 2)
    return points, np.ascontiguousarray(descriptors, dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances of 256-bit descriptors."""
    a64, b64 = a.view(np.uint64), b.view(np.uint64)  # (n, 4) words
    d = np.zeros((len(a), len(b)), np.uint16)
    for word in range(a64.shape[1]):
        d += np.bitwise_count(a64[:, word, None] ^ b64[None, :, word])
    return d


def word_ids(descriptors: np.ndarray) -> np.ndarray:
    """(n, WORD_TABLES) word ids, table t's ids offset by t * 2**WORD_BITS."""
    bits = np.unpackbits(descriptors, axis=1)  # (n, 256)
    weights = (1 << np.arange(WORD_BITS, dtype=np.int64))[::-1]
    ids = bits[:, VOCAB_BITS].astype(np.int64) @ weights  # (n, tables)
    return ids + (np.arange(WORD_TABLES, dtype=np.int64) << WORD_BITS)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by one sort (numpy's hash-based unique is several times
    slower on these integer arrays)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def ratio_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (q, t) of descriptor pairs passing the ratio test: t is q's
    nearest train descriptor, clearly nearer than the second nearest."""
    if len(query) < 2 or len(train) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d = hamming(np.ascontiguousarray(query), np.ascontiguousarray(train))
    best = d.argmin(axis=1)  # the first of equal distances: deterministic
    two = np.partition(d, 1, axis=1)
    q = np.flatnonzero(two[:, 0] < RATIO_TEST * two[:, 1])
    return q.astype(np.int64), best[q].astype(np.int64)


def plausible(h: np.ndarray, side: int) -> bool:
    """Whether homography ``h`` looks like a crop / zoom / rotation / mild
    perspective of a photo, not a degenerate fit to chance matches."""
    if h is None or not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return False
    h = h / h[2, 2]
    a = h[:2, :2]
    det = np.linalg.det(a)
    if det <= 0:  # a reflection: mirrors are matched through mirrored descriptors
        return False
    s = np.linalg.svd(a, compute_uv=False)
    zoom = np.sqrt(det)
    if not 1 / MAX_ZOOM <= zoom <= MAX_ZOOM or s[0] / s[1] > MAX_SHEAR:
        return False
    # w = 1 + h20 x + h21 y scales the image locally by 1/w; over a thumbnail
    # of ``side`` it must stay positive and vary by at most PERSPECTIVE_MAX.
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64)
    w = 1 + corners @ h[2, :2]
    return bool(w.min() > 0 and w.max() / w.min() <= PERSPECTIVE_MAX)


def spread(points: np.ndarray) -> float:
    """Standard deviation of points along their narrowest axis: small when
    the points lie on a line or in a thin strip (e.g. a shared caption)."""
    if len(points) < 3:
        return 0.0
    return float(np.sqrt(max(np.linalg.eigvalsh(np.cov(points.T.astype(np.float64)))[0], 0.0)))


def verify(points_a, desc_a, points_b, desc_b, side: int) -> tuple[int, dict]:
    """Inliers of the best plausible homography a -> b (0 when there is none)
    and diagnostics."""
    info = {}
    q, t = ratio_matches(desc_a, desc_b)
    info["matches"] = len(q)
    if len(q) < MIN_INLIERS:
        return 0, info
    src, dst = points_a[q], points_b[t]
    # Cheap screen: a similarity transform (2-point samples) with a loose
    # tolerance rejects chance matches in few iterations.
    sim, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3 * RANSAC_PIXELS,
                                            maxIters=500, confidence=0.99, refineIters=0)
    info["sim_inliers"] = 0 if mask is None else int(mask.sum())
    if sim is None or info["sim_inliers"] < MIN_INLIERS or info["sim_inliers"] < MIN_INLIER_RATIO * len(q):
        return 0, info
    # USAC_FAST (OpenCV's USAC with local optimisation, seeded: deterministic)
    # finds the same inliers as plain RANSAC + Levenberg-Marquardt to within a
    # couple of points, at an eighth of the cost on well-supported pairs.
    h, mask = cv2.findHomography(src, dst, HOMOGRAPHY_METHOD, RANSAC_PIXELS, maxIters=2000, confidence=0.995)
    if h is None or mask is None:
        return 0, info
    keep = mask.ravel().astype(bool)
    inliers = int(keep.sum())
    info["inliers"] = inliers
    info["plausible"] = plausible(h, side)
    info["spread"] = min(spread(src[keep]), spread(dst[keep])) / side
    if (inliers < MIN_INLIERS or inliers < MIN_INLIER_RATIO * len(q) or not info["plausible"]
            or info["spread"] < MIN_SPREAD):
        return 0, info
    return inliers, info


def shared_words(a: np.ndarray, b: np.ndarray) -> int:
    """How many visual words two sorted unique word lists share."""
    return len(np.intersect1d(a, b, assume_unique=True))


def evidence_score(inliers: int, fewest_keypoints: int, scale: float) -> float:
    """Verified inliers -> similarity in [0, 1].

    Chance agreement is bounded by a count, not by a share, so the score grows
    with the inlier count and saturates (``scale`` inliers give 0.63, three
    times as many 0.95); a pair whose keypoints nearly all agree scores at
    least that share, so an image with few keypoints can still reach 1.
    """
    if inliers <= 0:
        return 0.0
    share = inliers / max(fewest_keypoints, 1)
    return float(min(1.0, max(1.0 - np.exp(-inliers / scale), share)))


def orb_feature(gray: np.ndarray, side: int, features: int) -> dict:
    """Keypoints, descriptors and visual words of an image and of its mirror."""
    small = thumbnail(gray, side)
    points, desc, keypoints = detect(small, features)
    points_m, desc_m = describe_mirrored(small, keypoints, features)
    return {
        "points": points, "desc": desc, "words": sorted_unique(word_ids(desc).ravel()).astype(np.int32),
        "points_m": points_m, "desc_m": desc_m, "words_m": sorted_unique(word_ids(desc_m).ravel()).astype(np.int32),
        # order-free identity of the content, to score a pair the same way round
        "key": np.array([zlib.crc32(desc.tobytes()), len(desc)], dtype=np.int64),
    }


def match_score(a: dict, b: dict, side: int, features: int) -> float:
    """Similarity of two orb features (of ``features`` keypoints on a
    thumbnail of ``side``) from the inliers of their verified match."""
    return match(a, b, side, features)[0]


def match(a: dict, b: dict, side: int, features: int) -> tuple[float, dict]:
    """:func:`match_score` and the diagnostics of :func:`verify` (``matches``:
    ratio-test matches, ...; empty when an image has no keypoints)."""
    fewest = min(len(a["desc"]), len(b["desc"]))
    if fewest == 0:
        return 0.0, {}
    # Match b as it is or mirrored, whichever shares more visual words with
    # a: one descriptor matching per pair instead of two.
    mirrored = shared_words(a["words"], b["words_m"]) > shared_words(a["words"], b["words"])
    suffix = "_m" if mirrored else ""
    inliers, info = verify(a["points"], a["desc"], b["points" + suffix], b["desc" + suffix], side)
    return evidence_score(inliers, fewest, EVIDENCE_SCALE * features), info


def bag_of_words(features) -> "scipy.sparse.csr_matrix":
    """Rows: idf-weighted, L2-normalised presence of the words of an image and
    of its mirror (so an image and its mirror image get the same row)."""
    from scipy import sparse

    n, vocabulary = len(features), WORD_TABLES << WORD_BITS
    words = [w for f in features for w in (f["words"], f["words_m"])]
    counts = np.array([len(w) for w in words], dtype=np.int64)
    cols = np.concatenate(words).astype(np.int64) if n else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(2 * n) // 2, counts)
    present = sorted_unique(rows * vocabulary + cols)  # each word once per image, in one sort
    rows, cols = present // vocabulary, present % vocabulary
    df = np.bincount(cols, minlength=vocabulary)
    idf = np.log((n + 1) / (df + 1))  # a word in every image weighs 0
    # Stop words: a word in many images says little about any pair and costs
    # the most in the product of the rows (pairs sharing it), so it is dropped.
    idf[df > max(STOP_WORD_SHARE * n, STOP_WORD_MIN)] = 0.0
    weights = idf[cols]
    kept = weights > 0
    rows, cols, weights = rows[kept], cols[kept], weights[kept]
    norms = np.sqrt(np.bincount(rows, weights=weights**2, minlength=n))
    weights = np.where(norms[rows] > 0, weights / np.maximum(norms[rows], 1e-12), 0.0).astype(np.float32)
    return sparse.csr_matrix((weights, (rows, cols)), shape=(n, vocabulary))


def nearest(bow, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, rank): each row's ``k`` most similar other rows (cosine > 0)."""
    bow_t = bow.T.tocsc()
    return top_k_pairs(lambda start, stop: (bow[start:stop] @ bow_t).toarray(), bow.shape[0], k, above=0.0,
                       with_rank=True)


class ORB(Method):
    name = "orb"
    summary = "ORB keypoints + geometric check: crops, rotations, mirror images, perspective (slow)"
    default_threshold = 0.63  # on the F1-best plateau of the dev benchmark (calibrate.py --method orb)
    options = (
        Option("orb_features", int, 300, "orb: keypoints per image (more: slower, finds smaller overlaps)"),
        Option("orb_side", int, 384, "orb: longest side in px of the thumbnail keypoints are found on"),
        candidates_option(10),
    )
    cache_scores = True
    parallel_scores = True
    score_chunk = 512  # about a second of matching per progress step
    feature_version = 3  # 3: mirror descriptors computed at the mirrored keypoints

    def check_params(self) -> None:
        if not 50 <= self.params["orb_features"] <= 5000:
            raise ValueError("--orb-features must be between 50 and 5000")
        if not 64 <= self.params["orb_side"] <= 2048:
            raise ValueError("--orb-side must be between 64 and 2048")
        self.decode_side = self.params["orb_side"]  # decode no larger than the thumbnail

    def extract(self, image: np.ndarray) -> dict:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return orb_feature(np.ascontiguousarray(image, dtype=np.uint8), self.params["orb_side"],
                           self.params["orb_features"])

    def stack(self, features):
        return {"features": list(features), "bow": None}

    def pair_score(self, a: dict, b: dict) -> float:
        """Similarity of two features; the same whichever comes first."""
        if tuple(a["key"]) > tuple(b["key"]):
            a, b = b, a
        if len(a["desc"]) and np.array_equal(a["desc"], b["desc"]) and np.array_equal(a["points"], b["points"]):
            return 1.0
        return match_score(a, b, self.params["orb_side"], self.params["orb_features"])

    def score(self, stacked, i, j):
        feats = stacked["features"]
        return np.array([self.pair_score(feats[a], feats[b]) for a, b in zip(i.tolist(), j.tolist())], dtype=np.float64)

    def candidates(self, stacked, floor):
        if stacked["bow"] is None:
            stacked["bow"] = bag_of_words(stacked["features"])
        return nearest(stacked["bow"], self.params["candidates"])
