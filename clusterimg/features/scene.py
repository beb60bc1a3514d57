"""The same scene from another view: ORB first, RootSIFT + epipolar geometry next.

orb finds copies whose pixels moved as one plane (crops, rotations, mirror
images, perspective warps). Two photos of a 3-D scene from two places (burst
shots a step apart, stereo pairs, video frames, a building from two corners, an
object put down in clutter) are not related by one homography, and ORB's
binary descriptors lose track under large viewpoint or light changes. This
backend is a cascade:

1. the orb check (same features, same thresholds); a pair it accepts keeps
   orb's score and costs nothing more;
2. otherwise RootSIFT keypoints spread over the image (a grid-bucketed pick of
   the strongest responses) are matched with the ratio test and mutual nearest
   neighbours, and verified with OpenCV's USAC / MAGSAC++ twice: a homography
   (planes, pure rotation) and a fundamental matrix (any rigid 3-D scene). The
   fundamental matrix is weaker evidence (a point only has to lie on a line),
   so it needs more inliers, a larger share of the matches, and inliers that
   cover many cells of a grid over both images, not one textured patch.

Candidates are orb's bag-of-words neighbours plus the neighbours by a small
global descriptor of the image's own (a spatial layout of RootSIFT words
pooled into a fixed random projection, and a colour-free tone layout), so that
pairs that share few ORB words but show one scene still get verified.
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.engine.search import top_k_pairs
from clusterimg.features.base import Method, Option, candidates_option
from clusterimg.features.orb import bag_of_words, match_score, nearest, orb_feature, plausible, thumbnail

ORB_FEATURES = 500  # stage 1: orb as it was calibrated for this backend
ORB_SIDE = 512
ORB_THRESHOLD = 0.57  # orb's default: a pair above it is settled by stage 1

SIFT_RATIO = 0.8
GRID = 4  # keypoints are picked per cell of a GRID x GRID grid; coverage is counted on it too
H_PIXELS = 4.0  # homography tolerance (px on a thumbnail of ``scene_side``)
F_PIXELS = 1.5  # epipolar distance tolerance
# Homography evidence: as orb.
H_MIN_INLIERS = 15
H_MIN_RATIO = 0.25
# Fundamental-matrix evidence: stricter.
F_MIN_INLIERS = 40
F_MIN_RATIO = 0.35
F_MIN_EXCESS = 25  # fundamental-matrix inliers beyond the homography's
MIN_COVERAGE = 8  # grid cells (of GRID * GRID) holding homography inliers, in both images
F_MIN_COVERAGE = 6  # the same for the fundamental matrix's inliers
SEED = 16
# A homography whose linear part is this close to the identity, with no
# perspective, is a shift of the frame.
TRANSLATION_TOLERANCE = 0.04  # grid cells (of GRID * GRID) holding inliers, in both images
SCENE_SCALE = 60.0  # stage 2: a verified pair scores ORB_THRESHOLD + the rest * (1 - exp(-inliers / SCENE_SCALE))

GLOBAL_DIM = 128
_GLOBAL_SEED = 20261126


def _rootsift(desc: np.ndarray) -> np.ndarray:
    desc = desc.astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(desc)


def sift_detect(gray: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, 2) positions, uint8 (n, 128) RootSIFT * 255) of up to
    ``features`` keypoints, the strongest per cell of a grid so that they
    spread over the image."""
    sift = cv2.SIFT_create(nfeatures=features * 3, contrastThreshold=0.02)
    keypoints, desc = sift.detectAndCompute(gray, None)
    if desc is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    points = np.array([k.pt for k in keypoints], np.float32)
    response = np.array([k.response for k in keypoints], np.float64)
    h, w = gray.shape[:2]
    cells = (np.minimum(points[:, 1] * GRID // max(h, 1), GRID - 1) * GRID
             + np.minimum(points[:, 0] * GRID // max(w, 1), GRID - 1)).astype(np.int64)
    # Round-robin over cells by rank of response inside the cell.
    order = np.lexsort((np.arange(len(points)), -response, cells))
    cells_sorted = cells[order]
    starts = np.searchsorted(cells_sorted, cells_sorted, side="left")
    rank = np.arange(len(order)) - starts
    pick = order[np.lexsort((np.arange(len(order)), -response[order], rank))][:features]
    pick = np.sort(pick)
    root = _rootsift(desc[pick])
    return points[pick], np.clip(np.round(root * 255), 0, 255).astype(np.uint8)


def _projection() -> np.ndarray:
    rng = np.random.default_rng(_GLOBAL_SEED)
    return rng.standard_normal((128, 32)).astype(np.float32)


PROJECTION = _projection()


def global_descriptor(points: np.ndarray, desc: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A small vector describing the whole image: RootSIFT descriptors pooled
    (mean of power-normalised random projections) over the whole image and
    over its 2 x 2 quarters, L2-normalised."""
    out = np.zeros(GLOBAL_DIM + 32, np.float32)
    if len(desc):
        proj = desc.astype(np.float32) / 255 @ PROJECTION
        proj = np.sign(proj) * np.sqrt(np.abs(proj))
        out[:32] = proj.mean(axis=0) * 2
        h, w = shape
        quarter = (points[:, 1] >= h / 2).astype(int) * 2 + (points[:, 0] >= w / 2).astype(int)
        for q in range(4):
            sel = quarter == q
            if sel.any():
                out[32 * (q + 1): 32 * (q + 2)] = proj[sel].mean(axis=0)
    norm = np.linalg.norm(out)
    return out / norm if norm > 0 else out


def mutual_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ia, ib): pairs passing the ratio test that are each other's nearest."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    ab = matcher.knnMatch(fa, fb, k=2)
    ba = matcher.knnMatch(fb, fa, k=1)
    back = np.full(len(b), -1, np.int64)
    for m in ba:
        if m:
            back[m[0].queryIdx] = m[0].trainIdx
    ia, ib = [], []
    for pair in ab:
        if len(pair) == 2 and pair[0].distance < SIFT_RATIO * pair[1].distance and back[pair[0].trainIdx] == pair[0].queryIdx:
            ia.append(pair[0].queryIdx)
            ib.append(pair[0].trainIdx)
    return np.asarray(ia, np.int64), np.asarray(ib, np.int64)


def coverage(points: np.ndarray, shape) -> int:
    """Cells of a GRID x GRID grid over an image of ``shape`` holding points."""
    if not len(points):
        return 0
    h, w = shape
    cx = np.minimum(points[:, 0] * GRID // max(w, 1), GRID - 1)
    cy = np.minimum(points[:, 1] * GRID // max(h, 1), GRID - 1)
    return len(np.unique(cy * GRID + cx))


def near_translation(h: np.ndarray) -> bool:
    """Whether homography ``h`` only shifts the image."""
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return False
    h = h / h[2, 2]
    return bool(np.abs(h[:2, :2] - np.eye(2)).max() < TRANSLATION_TOLERANCE and np.abs(h[2, :2]).max() < 1e-4)


def scene_verify(a: dict, b: dict) -> tuple[int, dict]:
    """Inliers of the accepted model (homography or fundamental matrix) of a
    pair, 0 when neither passes; and diagnostics."""
    info: dict = {}
    ia, ib = mutual_matches(a["s_desc"], b["s_desc"])
    info["matches"] = n = len(ia)
    if n < H_MIN_INLIERS:
        return 0, info
    src = a["s_points"][ia].astype(np.float32)
    dst = b["s_points"][ib].astype(np.float32)
    shape_a, shape_b = tuple(a["shape"]), tuple(b["shape"])
    best = 0
    cv2.setRNGSeed(SEED)  # USAC samples at random: the same pair must score the same every time
    h, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, H_PIXELS, maxIters=2000, confidence=0.999)
    h_inliers = 0
    if h is not None and mask is not None:
        keep = mask.ravel().astype(bool)
        h_inliers = k = int(keep.sum())
        cov = min(coverage(src[keep], shape_a), coverage(dst[keep], shape_b))
        moved = not near_translation(h)
        info.update(h_inliers=k, h_cov=cov, h_moved=moved, h_plausible=plausible(h, max(shape_a)))
        # A homography that only shifts the frame is what a fixed camera sees
        # of a static background behind different foregrounds (other poses of
        # one chessboard, frames far apart): orb settles true copies of that
        # kind, so stage 2 does not accept it.
        if (k >= H_MIN_INLIERS and k >= H_MIN_RATIO * n and cov >= MIN_COVERAGE and moved
                and info["h_plausible"]):
            best = k
    if n >= F_MIN_INLIERS:
        cv2.setRNGSeed(SEED)
        f, mask = cv2.findFundamentalMat(src, dst, cv2.USAC_MAGSAC, F_PIXELS, 0.999, 2000)
        if f is not None and mask is not None and f.shape == (3, 3):
            keep = mask.ravel().astype(bool)
            k = int(keep.sum())
            cov = min(coverage(src[keep], shape_a), coverage(dst[keep], shape_b))
            info.update(f_inliers=k, f_cov=cov)
            # 3-D evidence: inliers of the epipolar geometry beyond those of
            # the dominant plane (a static background fits both models alike).
            if (k >= F_MIN_INLIERS and k >= F_MIN_RATIO * n and cov >= F_MIN_COVERAGE
                    and k - h_inliers >= F_MIN_EXCESS):
                best = max(best, k - h_inliers)
    info["inliers"] = best
    return best, info


class Scene(Method):
    name = "scene"
    summary = "orb, then RootSIFT + homography / fundamental matrix: other viewpoints, stereo, video frames (slower)"
    default_threshold = 0.57
    options = (
        Option("scene_side", int, 640, "scene: longest side in px of the thumbnail keypoints are found on"),
        Option("scene_features", int, 1000, "scene: RootSIFT keypoints per image"),
        candidates_option(10),
    )
    cache_scores = True
    parallel_scores = True
    score_chunk = 256  # matching costs tens of milliseconds a pair
    feature_version = 2  # 2: orb mirror descriptors computed at the mirrored keypoints

    def check_params(self) -> None:
        if not 128 <= self.params["scene_side"] <= 2048:
            raise ValueError("--scene-side must be between 128 and 2048")
        if not 50 <= self.params["scene_features"] <= 5000:
            raise ValueError("--scene-features must be between 50 and 5000")
        self.decode_side = self.params["scene_side"]

    def extract(self, image: np.ndarray) -> dict:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        gray = np.ascontiguousarray(image, dtype=np.uint8)
        feat = orb_feature(gray, ORB_SIDE, ORB_FEATURES)
        small = thumbnail(gray, self.params["scene_side"])
        points, desc = sift_detect(small, self.params["scene_features"])
        feat.update(s_points=points, s_desc=desc, shape=np.array(small.shape[:2], np.int64),
                    glob=global_descriptor(points, desc, small.shape[:2]))
        return feat

    def stack(self, features):
        return {"features": list(features), "bow": None}

    def pair_score(self, a: dict, b: dict) -> float:
        """Similarity of two features; the same whichever comes first."""
        if tuple(a["key"]) > tuple(b["key"]):
            a, b = b, a
        if (np.array_equal(a["desc"], b["desc"]) and np.array_equal(a["points"], b["points"])
                and np.array_equal(a["s_desc"], b["s_desc"])):
            return 1.0 if len(a["desc"]) or len(a["s_desc"]) else 0.0
        first = match_score(a, b, ORB_SIDE, ORB_FEATURES)
        if first >= ORB_THRESHOLD:
            return first
        inliers, _ = scene_verify(a, b)
        if inliers <= 0:
            return first
        # A pair stage 2 accepts scores above the default threshold, higher with more inliers.
        return float(ORB_THRESHOLD + (1 - ORB_THRESHOLD) * (1 - np.exp(-inliers / SCENE_SCALE)))

    def score(self, stacked, i, j):
        feats = stacked["features"]
        return np.array([self.pair_score(feats[a], feats[b]) for a, b in zip(i.tolist(), j.tolist())],
                        dtype=np.float64)

    def candidates(self, stacked, floor):
        feats = stacked["features"]
        if stacked["bow"] is None:
            stacked["bow"] = bag_of_words(feats)
        k = self.params["candidates"]
        i1, j1, _ = nearest(stacked["bow"], k)
        glob = np.stack([f["glob"] for f in feats]) if feats else np.zeros((0, GLOBAL_DIM + 32), np.float32)
        i2, j2 = top_k_pairs(lambda s, e: glob[s:e] @ glob.T, len(feats), k, above=0.0)
        i = np.concatenate([i1, i2])
        j = np.concatenate([j1, j2])
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        pairs = np.unique(np.stack([lo, hi], axis=1), axis=0) if len(lo) else np.zeros((0, 2), np.int64)
        return pairs[:, 0], pairs[:, 1]
