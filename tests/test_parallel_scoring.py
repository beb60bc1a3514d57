"""Pair scores computed in worker processes (orb): the same result with one
worker or two, every scored pair stored once by the main process, scores
remembered for the run, and Ctrl-C during parallel scoring resumable."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clusterimg.api import cluster
from clusterimg.cache import Cache
from clusterimg.cli import main
from clusterimg.clustering.threshold import group_features
from clusterimg.engine import scoring
from clusterimg.engine.scoring import PackedFeatures, PairScorer, pack_features
from clusterimg.features import get_method

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def orb_features():
    method = get_method("orb")
    files = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    return method, files, [method.feature(f) for f in files]


def stored_scores(folder: Path) -> int:
    with Cache(folder, get_method("orb")) as cache:
        return cache.db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]


def manifest_core(out: Path) -> dict:
    m = json.loads((out / "clusters.json").read_text())
    return {k: m[k] for k in ("clusters", "outliers", "skipped", "threshold", "params", "method")}


def test_packed_features_read_back_equal(orb_features, tmp_path):
    _, _, features = orb_features
    layout = pack_features(features, str(tmp_path))
    packed = PackedFeatures(str(tmp_path), layout)
    assert len(packed) == len(features)
    for k in (0, 7, len(features) - 1):
        assert sorted(packed[k]) == sorted(features[k])
        for name, value in features[k].items():
            assert np.array_equal(packed[k][name], value) and packed[k][name].dtype == value.dtype


def test_workers_score_the_same_as_the_main_process(orb_features, monkeypatch):
    method, files, features = orb_features
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(features), 120)
    j = (i + rng.integers(1, len(features), 120)) % len(features)
    alone = PairScorer(method, files).score_global(features, i, j)
    calls = []
    real = PairScorer._score_in_workers
    monkeypatch.setattr(PairScorer, "_score_in_workers",
                        lambda self, a, b, screen: calls.append(len(a)) or real(self, a, b, screen))
    with PairScorer(method, files, features=features, workers=2) as pooled:
        together = pooled.score_global(features, i, j)
        assert calls == [120]  # one call, all pairs in the workers
        assert pooled._folder is not None and os.path.isdir(pooled._folder)
        folder = pooled._folder
    assert np.array_equal(alone, together)
    assert not os.path.exists(folder)  # the shared features are removed with the workers


def test_a_pair_is_scored_once_per_run_without_a_cache(orb_features):
    method, files, features = orb_features
    scorer = PairScorer(method, files)
    i, j = np.array([0, 1, 2]), np.array([1, 2, 0])
    first = scorer.score_global(features, i, j)
    again = scorer.score_global(features, j, i)  # the same pairs, the other way round
    assert np.array_equal(first, again)
    assert scorer.computed == 3  # scored once: the second call is answered from the run's memory
    assert scorer.reused == 0  # "reused" counts only scores an earlier run left in the cache (there is none)


def test_grouping_is_the_same_with_one_or_two_workers(orb_features):
    method, files, features = orb_features
    one = group_features(method, features, method.default_threshold, batch_size=12,
                         scorer=PairScorer(method, files))[0]
    with PairScorer(method, files, features=features, workers=2) as scorer:
        two = group_features(method, features, method.default_threshold, batch_size=12, scorer=scorer)[0]
    assert one == two
    assert any(len(g) > 1 for g in one)


def test_same_manifest_with_one_and_two_workers(tmp_path):
    runner = CliRunner()
    args = ["run", str(EXAMPLES), "--method", "orb", "--transfer", "none", "-q", "--no-cache", "--batch-size", "20"]
    for j in ("1", "2"):
        done = runner.invoke(main, args + ["-j", j, "--out", str(tmp_path / j)])
        assert done.exit_code == 0, done.output
    assert manifest_core(tmp_path / "1") == manifest_core(tmp_path / "2")
    assert manifest_core(tmp_path / "1")["clusters"]


def test_rethresholding_scores_no_pair_twice(isolated_cache):
    first = cluster(EXAMPLES, method="orb", workers=2, cache=True)
    stored = stored_scores(isolated_cache)
    assert first.counts["pairs_scored"] == stored > 0  # nothing scored twice within the run
    second = cluster(EXAMPLES, method="orb", threshold=0.3, workers=2, cache=True)
    assert second.counts["pairs_reused"] > 0
    # every pair the second run scored was new: it added exactly that many rows
    assert stored_scores(isolated_cache) == stored + second.counts["pairs_scored"]


def test_ctrl_c_during_parallel_scoring_exits_130_and_resumes(tmp_path, monkeypatch, isolated_cache):
    runner = CliRunner()
    args = ["run", str(EXAMPLES), "--method", "orb", "--transfer", "none", "-q", "-j", "2"]
    plain = runner.invoke(main, args + ["--out", str(tmp_path / "plain"), "--no-cache"])
    assert plain.exit_code == 0, plain.output

    monkeypatch.setattr(scoring, "SCORE_PIECE", 16)  # several pieces, so Ctrl-C comes mid-way
    monkeypatch.setattr(scoring, "MIN_PAIRS_FOR_POOL", 8)  # 38 images: rounds of fewer than 48 pairs
    original = Cache.put_scores
    seen = {"n": 0, "workers": 0}
    real = PairScorer._score_in_workers

    def counting(self, a, b, screen):
        seen["workers"] += 1
        return real(self, a, b, screen)

    def put_then_stop(self, *args):
        seen["n"] += 1
        if seen["n"] == 3:  # the parent is collecting the workers' pieces
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(PairScorer, "_score_in_workers", counting)
    monkeypatch.setattr(Cache, "put_scores", put_then_stop)
    stopped = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert stopped.exit_code == 130, stopped.output
    assert "Traceback" not in stopped.output
    assert [line for line in stopped.output.splitlines() if line.strip()] == [
        "Interrupted. Run the same command again to resume: what was read so far is in the cache."]
    assert seen["workers"] >= 1  # it really was scoring in the workers
    monkeypatch.setattr(Cache, "put_scores", original)
    kept = stored_scores(isolated_cache)
    assert kept >= 16  # the pieces stored before Ctrl-C

    resumed = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert resumed.exit_code == 0, resumed.output
    assert manifest_core(tmp_path / "resumed") == manifest_core(tmp_path / "plain")


def test_workers_that_cannot_start_give_one_error(orb_features, monkeypatch):
    from clusterimg.errors import ClusterimgError

    method, files, features = orb_features

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scoring, "pack_features", full)
    with PairScorer(method, files, features=features, workers=2) as scorer:
        with pytest.raises(ClusterimgError, match="--workers 1"):
            scorer.score_global(features, np.arange(60) % 30, (np.arange(60) + 1) % 30)
        assert scorer._pool is None and scorer._folder is None
