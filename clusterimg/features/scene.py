"""The same scene from another view: ORB first, RootSIFT + epipolar geometry next.

orb finds copies whose pixels moved as one plane (crops, rotations, mirror
images, perspective warps). Two photos of a 3-D scene from two places (burst
shots a step apart, stereo pairs, video frames, a building from two corners, an
object put down in clutter) are not related by one homography, and ORB's
binary descriptors lose track under large viewpoint or light changes. This
backend is a cascade:

1. orb's check, with orb's default features (300 keypoints on a 384 px
   thumbnail) and threshold: a pair it accepts keeps orb's score and costs
   nothing more, so at the default threshold scene joins every pair orb joins;
2. a pair orb rejects goes on only if its ORB descriptors still agree
   (at least ``GATE_MATCHES`` ratio-test matches: two views of one scene keep
   dozens where the similarity / homography fit fails; unrelated photos keep a
   handful). Most candidate pairs of a photo collection are unrelated and stop
   here, which is what keeps scene near orb's speed. A pair whose embeddings
   (below) are at least ``embed_gate`` alike goes on too, if ORB keypoints
   found on a finer thumbnail (500 at 512 px) give ``FINER_GATE_MATCHES``: an
   object photographed alone and in clutter keeps almost no match at orb's
   resolution, and most pairs of one kind of thing have none at either;
3. the gated pair is matched with RootSIFT keypoints spread over the image (a
   grid-bucketed pick of the strongest responses; ratio test and mutual
   nearest neighbours by one exact integer matrix product) and verified with
   OpenCV's USAC / MAGSAC++ twice: a homography (planes, pure rotation) and a
   fundamental matrix (any rigid 3-D scene). The fundamental matrix is weaker
   evidence (a point only has to lie on a line), so it needs more inliers, a
   larger share of the matches, and inliers that cover many cells of a grid
   over both images, not one textured patch. A homography whose inliers cover
   only a corner of one image counts when they fill the other (an object and
   the same object in clutter).

SIFT costs a tenth of a second per image, ten times ORB, so it is not
extracted for every image: the feature keeps a JPEG of the grayscale
``scene_side`` thumbnail (tens of kB), and the RootSIFT keypoints of an image
are computed from it the first time a gated pair needs them (and remembered
for the rest of the run). The result is a pure function of the stored
features, so it does not depend on the order of pairs or the worker count.

Candidates come from two sources: each image's ``candidates`` nearest by the
bag of ORB visual words (orb's), and its ``embed_candidates`` nearest by a
small CNN embedding (EfficientNet-Lite0 on 160 px, the cnn backend's network).
ORB words miss what changed most: a scene from 40 degrees further round, an
object in clutter, where few ORB words survive; the embedding still puts such
pairs among an image's first few neighbours.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import cv2
import numpy as np

from clusterimg.engine.search import top_k_pairs
from clusterimg.features.base import Method, Option, candidates_option
from clusterimg.features.cnn import embedder
from clusterimg.errors import ClusterimgError
from clusterimg.images import load_image
from clusterimg.features.orb import bag_of_words, match, nearest, orb_feature, plausible, spread, thumbnail

ORB_FEATURES = 300  # stage 1: orb's default features and threshold
ORB_SIDE = 384
ORB_THRESHOLD = 0.63
# Stage 2 only for pairs with at least this many ORB ratio-test matches (or
# whose embeddings are at least ``--embed-gate`` alike). Every real_dev pair
# stage 2 accepts keeps 28 or more; pairs with 20 to 24 were a third of the
# gated pairs on dev, nearly all between different photos.
GATE_MATCHES = 25
EMBED_SIZE = 160  # input side of the candidate embedding's network
# A pair let through by the embedding alone needs FINER_GATE_MATCHES
# ratio-test matches between ORB keypoints found on a finer thumbnail (an
# object in clutter is too small for 300 keypoints at 384 px; real_dev's box
# keeps 27 there).
FINER_GATE_MATCHES = 20
FINER_ORB_FEATURES = 500
FINER_ORB_SIDE = 512
EMBED_BATCH = 8  # images per network call (a batch gives each image the same numbers as alone)
THUMB_QUALITY = 95  # JPEG quality of the stored thumbnail SIFT is found on
SIFT_MEMORY = 1024  # RootSIFT features remembered per process (about 130 kB each)

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
# ... and at least this share of them: a left view against the right view of
# another moment of one room fits its static background by a fundamental
# matrix with a few more inliers than a plane (about 30 % more); views of one
# moment add the whole foreground.
F_MIN_EXCESS_SHARE = 0.33
MIN_COVERAGE = 8  # grid cells (of GRID * GRID) holding homography inliers, in both images
F_MIN_COVERAGE = 6  # the same for the fundamental matrix's inliers
SEED = 16
# Object in clutter: a homography whose inliers fill one image (at least
# OBJECT_COVERAGE grid cells and OBJECT_HULL of its area) and are a small part
# of the other. The inliers must also be most of the matches: a fixed camera's
# other shots (other poses of one chessboard) match a static background by
# half their matches, never by OBJECT_COVERAGE cells of one image.
OBJECT_COVERAGE = 10
OBJECT_HULL = 0.35
OBJECT_MIN_INLIERS = 25
OBJECT_MIN_RATIO = 0.6
# A homography whose linear part is this close to the identity, with no
# perspective, is a shift of the frame.
TRANSLATION_TOLERANCE = 0.04
SCENE_SCALE = 60.0  # stage 2: a verified pair scores ORB_THRESHOLD + the rest * (1 - exp(-inliers / SCENE_SCALE))


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


def mutual_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ia, ib): pairs of uint8 descriptors passing the ratio test that are
    each other's nearest. Squared distances come from one float32 matrix
    product of the integer descriptors (every product and sum is an integer
    below 2**24, so exact: the same on any machine and thread count)."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    d2 = fa @ fb.T
    d2 *= -2
    d2 += (fb * fb).sum(axis=1)[None, :]
    d2 += (fa * fa).sum(axis=1)[:, None]
    rows = np.arange(len(a))
    best = d2.argmin(axis=1)  # the first of equal distances: deterministic
    back = d2.argmin(axis=0)
    first = d2[rows, best]
    d2[rows, best] = np.inf
    second = d2.min(axis=1)
    ia = np.flatnonzero((first < SIFT_RATIO ** 2 * second) & (back[best] == rows))
    return ia.astype(np.int64), best[ia].astype(np.int64)


def coverage(points: np.ndarray, shape) -> int:
    """Cells of a GRID x GRID grid over an image of ``shape`` holding points."""
    if not len(points):
        return 0
    h, w = shape
    cx = np.minimum(points[:, 0] * GRID // max(w, 1), GRID - 1)
    cy = np.minimum(points[:, 1] * GRID // max(h, 1), GRID - 1)
    return len(np.unique(cy * GRID + cx))


def hull_share(points: np.ndarray, shape) -> float:
    """Share of an image of ``shape`` inside the convex hull of ``points``."""
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(np.ascontiguousarray(points, dtype=np.float32))
    return float(cv2.contourArea(hull)) / max(shape[0] * shape[1], 1)


def fills_one_image(points_a: np.ndarray, shape_a, points_b: np.ndarray, shape_b) -> bool:
    """Whether inliers fill one of the two images (the object's own photo)."""
    return any(coverage(p, shape) >= OBJECT_COVERAGE and hull_share(p, shape) >= OBJECT_HULL
               for p, shape in ((points_a, shape_a), (points_b, shape_b)))


def near_translation(h: np.ndarray) -> bool:
    """Whether homography ``h`` only shifts the image."""
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-12:
        return False
    h = h / h[2, 2]
    return bool(np.abs(h[:2, :2] - np.eye(2)).max() < TRANSLATION_TOLERANCE and np.abs(h[2, :2]).max() < 1e-4)


def _robust(fit, *args, **kwargs):
    """(model, mask) of an OpenCV robust fit; (None, None) where USAC gives
    up with an error on degenerate matches (all points on a line, repeated
    points)."""
    try:
        return fit(*args, **kwargs)
    except cv2.error:
        return None, None


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
    h, mask = _robust(cv2.findHomography, src, dst, cv2.USAC_MAGSAC, H_PIXELS, maxIters=2000, confidence=0.999)
    h_inliers = 0
    if h is not None and mask is not None:
        keep = mask.ravel().astype(bool)
        h_inliers = k = int(keep.sum())
        cov = min(coverage(src[keep], shape_a), coverage(dst[keep], shape_b))
        moved = not near_translation(h)
        info.update(h_inliers=k, h_cov=cov, h_moved=moved, h_plausible=plausible(h, max(shape_a)),
                    h_spread=min(spread(src[keep]) / max(shape_a), spread(dst[keep]) / max(shape_b)))
        # A homography that only shifts the frame is what a fixed camera sees
        # of a static background behind different foregrounds (other poses of
        # one chessboard, frames far apart): orb settles true copies of that
        # kind, so stage 2 does not accept it.
        if k >= H_MIN_INLIERS and k >= H_MIN_RATIO * n and moved and info["h_plausible"]:
            if cov >= MIN_COVERAGE:
                best = k
            elif (k >= OBJECT_MIN_INLIERS and k >= OBJECT_MIN_RATIO * n
                  and fills_one_image(src[keep], shape_a, dst[keep], shape_b)):
                best = info["h_object"] = k
    if n >= F_MIN_INLIERS:
        cv2.setRNGSeed(SEED)
        f, mask = _robust(cv2.findFundamentalMat, src, dst, cv2.USAC_MAGSAC, F_PIXELS, 0.999, 2000)
        if f is not None and mask is not None and f.shape == (3, 3):
            keep = mask.ravel().astype(bool)
            k = int(keep.sum())
            cov = min(coverage(src[keep], shape_a), coverage(dst[keep], shape_b))
            info.update(f_inliers=k, f_cov=cov,
                        f_spread=min(spread(src[keep]) / max(shape_a), spread(dst[keep]) / max(shape_b)))
            # 3-D evidence: inliers of the epipolar geometry beyond those of
            # the dominant plane (a static background fits both models alike).
            if (k >= F_MIN_INLIERS and k >= F_MIN_RATIO * n and cov >= F_MIN_COVERAGE
                    and k - h_inliers >= max(F_MIN_EXCESS, F_MIN_EXCESS_SHARE * k)):
                best = max(best, k - h_inliers)
    info["inliers"] = best
    return best, info


def encode_thumbnail(gray: np.ndarray) -> np.ndarray:
    """A grayscale thumbnail as JPEG bytes (uint8 array; empty for an empty image)."""
    if gray.size == 0:
        return np.zeros(0, np.uint8)
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return buf.ravel().astype(np.uint8) if ok else np.zeros(0, np.uint8)


def decode_thumbnail(thumb: np.ndarray) -> np.ndarray | None:
    """The grayscale thumbnail stored by :func:`encode_thumbnail` (None for an empty one)."""
    return cv2.imdecode(thumb, cv2.IMREAD_GRAYSCALE) if len(thumb) else None


def sift_feature(thumb: np.ndarray, features: int) -> dict:
    """RootSIFT keypoints of a thumbnail stored by :func:`encode_thumbnail`:
    ``s_points``, ``s_desc`` and ``shape`` (what :func:`scene_verify` reads)."""
    gray = decode_thumbnail(thumb)
    if gray is None:
        return {"s_points": np.zeros((0, 2), np.float32), "s_desc": np.zeros((0, 128), np.uint8),
                "shape": np.array([1, 1], np.int64)}
    points, desc = sift_detect(gray, features)
    return {"s_points": points, "s_desc": desc, "shape": np.array(gray.shape[:2], np.int64)}


def shared_sift(folder: str | None, index: int, compute) -> dict:
    """The RootSIFT keypoints of image ``index``: read from ``folder`` (the
    scoring workers' shared folder) when another worker has found them
    already, else ``compute()``d and left there for the others. Without this
    every worker would describe an image its pairs need, up to once per
    worker. Files are written whole (a temporary name, then renamed); a
    folder that cannot be written only costs the sharing."""
    if folder is None:
        return compute()
    path = os.path.join(folder, f"{index}.npz")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in ("s_points", "s_desc", "shape")}
    except (OSError, ValueError, KeyError):
        pass
    found = compute()
    try:
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, f".{index}.{os.getpid()}.npz")
        np.savez(partial, **found)
        os.replace(partial, path)
    except OSError:
        pass
    return found


def gate(info: dict, alike: float, embed_gate: float) -> bool:
    """Whether a pair orb rejected is worth the RootSIFT stage (``alike``:
    the cosine of the pair's embeddings)."""
    return info.get("matches", 0) >= GATE_MATCHES or alike >= embed_gate


def embedding_cosine(a: dict, b: dict) -> float:
    """Cosine of two features' (unit-length, float16) embeddings, in float64."""
    return float(np.dot(a["embed"].astype(np.float64), b["embed"].astype(np.float64)))


class Scene(Method):
    name = "scene"
    summary = ("orb, then RootSIFT + homography / fundamental matrix: other viewpoints, stereo, video frames, "
               "an object in clutter")
    default_threshold = ORB_THRESHOLD
    options = (
        Option("scene_side", int, 640, "scene: longest side in px of the thumbnail RootSIFT keypoints are found on"),
        Option("scene_features", int, 1000, "scene: RootSIFT keypoints per image"),
        candidates_option(10),
        Option("embed_candidates", int, 3, "scene: nearest images per image by a CNN embedding that are also "
                                           "compared (0: none; ORB words miss large viewpoint changes)",
               changes_features=False),
        Option("embed_gate", float, 0.4, "scene: pairs whose embeddings are this alike (cosine) get the RootSIFT "
                                         "check even with few ORB matches (objects in clutter; lower: slower)"),
    )
    cache_scores = True
    parallel_scores = True
    screens = True
    # Even one pair goes to the workers: they share the RootSIFT keypoints
    # found (the main process's stacks cannot) and one pair may need two.
    min_pool_pairs = 1
    score_chunk = 512
    # 3: orb's default features + a JPEG thumbnail; RootSIFT found lazily. 4: + an embedding
    feature_version = 4

    def check_params(self) -> None:
        if not 128 <= self.params["scene_side"] <= 2048:
            raise ValueError("--scene-side must be between 128 and 2048")
        if not 50 <= self.params["scene_features"] <= 5000:
            raise ValueError("--scene-features must be between 50 and 5000")
        if self.params["embed_candidates"] < 0:
            raise ValueError("--embed-candidates must be at least 0")
        if not 0 < self.params["embed_gate"] <= 2:
            raise ValueError("--embed-gate must be above 0 (above 1: never)")
        self.decode_side = max(self.params["scene_side"], ORB_SIDE)
        from clusterimg.nn import efficientnet as ef

        try:
            ef.weights_path()
        except ClusterimgError as e:
            raise ValueError(str(e))  # a one-line usage error before any image is read
        try:
            # Built once here, not in every worker at once (as cnn does).
            self.onnx_dir = str(ef.model_file(input_size=EMBED_SIZE).parent)
        except ClusterimgError:
            self.onnx_dir = None  # an unwritable cache folder: each process builds it in memory

    def decode(self, path) -> dict:
        """The image decoded three times, each at a reduced JPEG scale: as orb
        decodes it (so that stage 1 sees orb's pixels and scores what orb
        scores), at ``scene_side``, and in colour for the embedding."""
        return {"orb": load_image(path, max_side=ORB_SIDE, gray=True),
                "scene": load_image(path, max_side=self.params["scene_side"], gray=True),
                "colour": load_image(path, gray=False, min_side=self._embedder().resize_side)}

    def _embedder(self):
        return embedder((None, EMBED_SIZE, None, None, None, 1, self.onnx_dir))

    def extract(self, image) -> dict:
        """Features of what :meth:`decode` gives, or of one image array."""
        return self.extract_many([image])[0]

    def extract_many(self, images) -> list[dict]:
        if not len(images):
            return []
        images = [x if isinstance(x, dict) else {"orb": x, "scene": x, "colour": x} for x in images]
        feats = []
        for image in images:
            orb_gray, gray = (np.ascontiguousarray(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) if x.ndim == 3 else x,
                                                   dtype=np.uint8) for x in (image["orb"], image["scene"]))
            feat = orb_feature(orb_gray, ORB_SIDE, ORB_FEATURES)
            feat["thumb"] = encode_thumbnail(thumbnail(gray, self.params["scene_side"]) if gray.size else gray)
            feats.append(feat)
        for feat, vector in zip(feats, self._embed([image["colour"] for image in images])):
            feat["embed"] = vector
        return feats

    def _embed(self, colour_images) -> np.ndarray:
        """Unit-length embeddings (float16 rows; zeros for an empty image)."""
        emb = self._embedder()
        inputs = np.stack([emb.preprocess(x) if x.size else np.zeros((3, EMBED_SIZE, EMBED_SIZE), np.float32)
                           for x in colour_images])
        v = np.concatenate([emb.embed(inputs[k:k + EMBED_BATCH]) for k in range(0, len(inputs), EMBED_BATCH)])
        v = v.astype(np.float64) / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        v[[x.size == 0 for x in colour_images]] = 0
        return v.astype(np.float16)

    def sift(self, feature: dict) -> dict:
        """The RootSIFT keypoints of a feature (computed from its thumbnail)."""
        return sift_feature(feature["thumb"], self.params["scene_features"])

    @staticmethod
    def finer_orb(feature: dict) -> dict:
        """ORB keypoints of a feature's thumbnail at ``FINER_ORB_SIDE`` (what :func:`match` reads)."""
        gray = decode_thumbnail(feature["thumb"])
        if gray is None:
            gray = np.zeros((0, 0), np.uint8)
        return orb_feature(thumbnail(gray, FINER_ORB_SIDE) if gray.size else gray, FINER_ORB_SIDE, FINER_ORB_FEATURES)

    def stack(self, features):
        """The features, their bag of words (made when candidates are asked
        for), the RootSIFT and finer ORB keypoints found so far, and, in the
        scoring workers, the folder they share (see :func:`shared_sift`)."""
        folder = getattr(features, "folder", None)
        return {"features": list(features), "bow": None, "sift": OrderedDict(), "finer": OrderedDict(),
                "shared": os.path.join(folder, "sift") if folder else None}

    def pair_score(self, a: dict, b: dict, sift=None, screen: bool = False, finer=None) -> float:
        """Similarity of two features; the same whichever comes first.
        ``sift(feature)`` gives a feature's RootSIFT keypoints and
        ``finer(feature)`` its finer ORB keypoints (defaults: :meth:`sift`
        and :meth:`finer_orb`, computed again). With ``screen``, NaN for a
        pair that needs them, which are then not computed."""
        if tuple(a["key"]) > tuple(b["key"]):
            a, b = b, a
        if (np.array_equal(a["desc"], b["desc"]) and np.array_equal(a["points"], b["points"])
                and np.array_equal(a["thumb"], b["thumb"])):
            return 1.0 if len(a["desc"]) or len(a["thumb"]) else 0.0
        first, info = match(a, b, ORB_SIDE, ORB_FEATURES)
        if first >= ORB_THRESHOLD or not gate(info, embedding_cosine(a, b), self.params["embed_gate"]):
            return first
        if screen:
            return float("nan")
        if info.get("matches", 0) < GATE_MATCHES:
            # Let through by the embedding alone: most such pairs are two
            # photos of one kind of thing. ORB on a finer thumbnail (a
            # twentieth of RootSIFT's cost) must find the matches first.
            finer = finer or self.finer_orb
            found = match(finer(a), finer(b), FINER_ORB_SIDE, FINER_ORB_FEATURES)[1].get("matches", 0)
            if found < FINER_GATE_MATCHES:
                return first
        sift = sift or self.sift
        inliers, _ = scene_verify(sift(a), sift(b))
        if inliers <= 0:
            return first
        # A pair stage 2 accepts scores above the default threshold, higher with more inliers.
        return float(ORB_THRESHOLD + (1 - ORB_THRESHOLD) * (1 - np.exp(-inliers / SCENE_SCALE)))

    def screen(self, stacked, i, j):
        """Stages 1 and 2 only: orb's score, or NaN where the gate sends the pair on."""
        feats = stacked["features"]
        return np.array([self.pair_score(feats[a], feats[b], screen=True) for a, b in zip(i.tolist(), j.tolist())],
                        dtype=np.float64)

    def score(self, stacked, i, j):
        feats = stacked["features"]

        def remembered(memory, compute):
            """``of(index)``: ``compute(index)``, kept for the next pairs (the SIFT_MEMORY latest)."""
            def of(index):
                if index in memory:
                    memory.move_to_end(index)
                else:
                    memory[index] = compute(index)
                    if len(memory) > SIFT_MEMORY:
                        memory.popitem(last=False)
                return memory[index]
            return of

        sift_of = remembered(stacked["sift"], lambda index: shared_sift(stacked["shared"], index,
                                                                        lambda: self.sift(feats[index])))
        finer_of = remembered(stacked["finer"], lambda index: self.finer_orb(feats[index]))
        out = np.empty(len(i), np.float64)
        for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
            index = {id(feats[a]): a, id(feats[b]): b}
            out[k] = self.pair_score(feats[a], feats[b], lambda f: sift_of(index[id(f)]),
                                     finer=lambda f: finer_of(index[id(f)]))
        return out

    def candidates(self, stacked, floor):
        """orb's candidates and each image's ``embed_candidates`` nearest by embedding."""
        feats = stacked["features"]
        if stacked["bow"] is None:
            stacked["bow"] = bag_of_words(feats)
        by_words = nearest(stacked["bow"], self.params["candidates"])
        if not self.params["embed_candidates"] or len(feats) < 2:
            return by_words
        vectors = np.stack([f["embed"] for f in feats]).astype(np.float32)
        by_embedding = top_k_pairs(lambda start, stop: vectors[start:stop] @ vectors.T, len(feats),
                                   self.params["embed_candidates"], with_rank=True)
        return tuple(np.concatenate(parts) for parts in zip(by_words, by_embedding))
