"""The feature and score cache: storage without pickle, keys and invalidation,
re-thresholding from stored scores, and resuming an interrupted run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clusterimg.cache import Cache, decode_feature, encode_feature, file_key, open_cache
from clusterimg.cli import main
from clusterimg.features import get_method
from clusterimg.features.phash import PHash
from clusterimg.api import cluster


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def scored_phash(monkeypatch):
    """phash with its scores cached (as an expensive backend's are), counting
    the pairs it really scores."""
    calls = {"pairs": 0}
    original = PHash.score

    def counting(self, stacked, i, j):
        calls["pairs"] += len(i)
        return original(self, stacked, i, j)

    monkeypatch.setattr(PHash, "cache_scores", True)
    monkeypatch.setattr(PHash, "score", counting)
    return calls


def same_result(a, b) -> bool:
    return ([(c.members, c.representative, c.scores) for c in a.clusters], a.outliers) == \
           ([(c.members, c.representative, c.scores) for c in b.clusters], b.outliers)


def test_features_round_trip_without_pickle():
    array = np.arange(12, dtype=np.uint64).reshape(3, 4)
    back = decode_feature(encode_feature(array))
    assert back.dtype == array.dtype and np.array_equal(back, array)
    feature = {"points": np.random.default_rng(0).random((5, 2), dtype=np.float32),
               "desc": np.zeros((5, 32), np.uint8), "key": np.array([3, 1])}
    back = decode_feature(encode_feature(feature))
    assert set(back) == set(feature)
    for name in feature:
        assert back[name].dtype == feature[name].dtype and np.array_equal(back[name], feature[name])
    assert encode_feature(np.array([object()], dtype=object)) is None  # never pickled: just not cached
    assert encode_feature("not a feature") is None


def test_file_key_changes_with_content(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"one")
    before = file_key(path)
    assert file_key(path) == before
    path.write_bytes(b"other content")
    assert file_key(path) != before
    assert file_key(tmp_path / "missing") is None


def test_features_reused_and_changed_files_read_again(photo_folder, isolated_cache):
    first = cluster(photo_folder, "phash", 0.8, cache=True)
    assert first.counts["features_read"] == 11 and first.counts["features_reused"] == 0
    changed = photo_folder / "single_0.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")  # new size: a new file key
    # a new file (not byte-identical to another: exact copies are never read)
    (photo_folder / "new.png").write_bytes((photo_folder / "b" / "two.png").read_bytes() + b"\0")
    second = cluster(photo_folder, "phash", 0.8, cache=True)
    assert second.counts["features_read"] == 2 and second.counts["features_reused"] == 10
    # other params: another method key, nothing reused by mistake
    other = cluster(photo_folder, "phash", 0.8, hash_size=16, cache=True)
    assert other.counts["features_reused"] == 0


def test_other_version_is_not_used(photo_folder, isolated_cache, monkeypatch):
    cluster(photo_folder, "phash", 0.8, cache=True)
    monkeypatch.setattr(PHash, "feature_version", PHash.feature_version + 1)
    again = cluster(photo_folder, "phash", 0.8, cache=True)
    assert again.counts["features_reused"] == 0


def test_rethreshold_scores_nothing_again_and_matches_cold_run(photo_folder, scored_phash):
    cluster(photo_folder, "phash", 0.9, cache=True, exhaustive=True)
    scored_first = scored_phash["pairs"]
    assert scored_first >= 55  # every pair of 11 images
    warm = cluster(photo_folder, "phash", 0.6, cache=True, exhaustive=True)
    assert scored_phash["pairs"] == scored_first  # all from the cache
    assert warm.counts["pairs_scored"] == 0 and warm.counts["pairs_reused"] > 0
    cold = cluster(photo_folder, "phash", 0.6, exhaustive=True, cache=False)
    assert same_result(warm, cold)


def test_cached_features_give_the_same_result_with_pool(photo_folder, monkeypatch):
    import clusterimg.engine.extract as extract

    monkeypatch.setattr(extract, "MIN_IMAGES_FOR_POOL", 2)  # use real worker processes
    pooled = cluster(photo_folder, "phash", 0.8, cache=True, workers=2)
    cached = cluster(photo_folder, "phash", 0.8, cache=True, workers=1)
    assert cached.counts["features_reused"] == 11
    assert same_result(pooled, cached)


def manifest_core(out: Path) -> dict:
    m = json.loads((out / "clusters.json").read_text())
    return {k: m[k] for k in ("clusters", "outliers", "skipped", "threshold", "params", "method")}


def interrupt_after(monkeypatch, cls, name: str, calls: int):
    """Make cls.name raise KeyboardInterrupt (as Ctrl-C does) on call number ``calls``."""
    original = getattr(cls, name)
    seen = {"n": 0}

    def wrapped(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapped)
    return original


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: phash reads in threads
def test_interrupted_extraction_resumes_and_gives_the_same_manifest(photo_folder, tmp_path, monkeypatch,
                                                                     isolated_cache, workers):
    runner = CliRunner()
    args = ["run", str(photo_folder), "--method", "phash", "--transfer", "none", "-q", "-j", workers]
    plain = runner.invoke(main, args + ["--out", str(tmp_path / "plain"), "--no-cache"])
    assert plain.exit_code == 0, plain.output

    # 11 images, read 2 per chunk: Ctrl-C while the fourth chunk is hashed
    original = interrupt_after(monkeypatch, PHash, "extract_many", 4)
    stopped = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert stopped.exit_code == 130
    assert "Interrupted" in stopped.output and "Traceback" not in stopped.output
    monkeypatch.setattr(PHash, "extract_many", original)

    with open_cache(get_method("phash"), None) as cache:  # the images read before Ctrl-C were kept
        kept = cache.db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    if workers == "1":
        assert kept == 6
    else:  # the other thread may have finished one more chunk, but not all
        assert 4 <= kept <= 8
    resumed = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert resumed.exit_code == 0, resumed.output
    assert manifest_core(tmp_path / "resumed") == manifest_core(tmp_path / "plain")


def test_interrupted_scoring_resumes_and_gives_the_same_manifest(photo_folder, tmp_path, monkeypatch,
                                                                  scored_phash):
    runner = CliRunner()
    # three batches (4 + 4 + 3 images): one scoring call each, then the merge stage
    args = ["run", str(photo_folder), "--method", "phash", "--transfer", "none", "-q", "--exhaustive", "-t", "0.7",
            "--batch-size", "4"]
    plain = runner.invoke(main, args + ["--out", str(tmp_path / "plain"), "--no-cache"])
    assert plain.exit_code == 0, plain.output
    scored_plain = scored_phash["pairs"]

    original = interrupt_after(monkeypatch, PHash, "score", 3)  # Ctrl-C while scoring the third batch
    stopped = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert stopped.exit_code == 130 and "Traceback" not in stopped.output
    monkeypatch.setattr(PHash, "score", original)
    with Cache(Path(os.environ["CLUSTERIMG_CACHE_DIR"]), get_method("phash")) as cache:
        assert cache.db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 12  # two batches' pairs kept
    before = scored_phash["pairs"]
    resumed = runner.invoke(main, args + ["--out", str(tmp_path / "resumed")])
    assert resumed.exit_code == 0, resumed.output
    assert scored_phash["pairs"] - before <= scored_plain - 12  # the stored pairs are not scored again
    assert manifest_core(tmp_path / "resumed") == manifest_core(tmp_path / "plain")


def test_no_cache_writes_nothing(photo_folder, tmp_path, isolated_cache):
    result = CliRunner().invoke(main, ["run", str(photo_folder), "--out", str(tmp_path / "o"), "--transfer",
                                       "none", "-q", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert not isolated_cache.exists()


def test_cache_dir_option_and_summary(photo_folder, tmp_path):
    where = tmp_path / "elsewhere"
    args = ["run", str(photo_folder), "--transfer", "none", "--cache-dir", str(where)]
    first = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert (where / "cache.sqlite").is_file()
    second = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b"), "-t", "0.6"])
    assert "Cache: features of 11 images reused, 0 computed" in second.output


def test_two_runs_sharing_the_cache_both_write_after_reading_scores(tmp_path):
    # A run reads stored scores, another run stores something, then the first
    # stores its new scores: it must wait its turn, not fail with
    # "database is locked" (it used to keep a stale snapshot open).
    method = get_method("orb")
    first, second = Cache(tmp_path / "shared", method), Cache(tmp_path / "shared", method)
    try:
        first.put_scores([1], [2], [0.5])
        first.commit()
        assert first.get_scores([1, 2]) == {(1, 2): 0.5}
        second.put_scores([3], [4], [0.25])
        second.commit()
        first.put_scores([5], [6], [0.75])
        first.commit()
        assert second.get_scores([1, 2, 3, 4, 5, 6]) == {(1, 2): 0.5, (3, 4): 0.25, (5, 6): 0.75}
    finally:
        first.close()
        second.close()


def test_options_that_change_no_feature_keep_the_cache_key():
    from clusterimg.cache import method_key

    def key(name, **options):
        return method_key(get_method(name, **options))

    assert key("orb", candidates=10) == key("orb", candidates=40)
    assert key("orb", orb_features=300) != key("orb", orb_features=500)
    assert key("cnn", batch=4) == key("cnn", batch=16)
