"""`clusterimg cache info|prune|clear` and the cache's size cap with
least-recently-used eviction."""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterimg import cache_admin
from clusterimg.api import cluster
from clusterimg.cache import CACHE_FILE, SCHEMA, file_key
from clusterimg.cli import main
from clusterimg.features.phash import PHash
from conftest import make_photo, write_photo


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(folder))
    monkeypatch.delenv(cache_admin.MAX_SIZE_ENV, raising=False)
    return folder


@pytest.fixture
def clock(monkeypatch):
    """The time eviction sees as 'now', set by the test."""
    t = {"now": 1000.0}
    monkeypatch.setattr(cache_admin, "now", lambda: t["now"])
    return t


def folder_of(root: Path, seeds, size=(320, 240)) -> Path:
    for s in seeds:
        write_photo(root / f"p{s}.jpg", make_photo(s, size), quality=90)
    return root


def stored_keys(cache_dir: Path) -> set[int]:
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        return {k for (k,) in db.execute("SELECT fkey FROM features")}


def keys_of(folder: Path) -> set[int]:
    return {file_key(p) for p in folder.iterdir()}


def n_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def info_json(cache_dir: Path) -> dict:
    out = CliRunner().invoke(main, ["cache", "info", "--json", "--cache-dir", str(cache_dir)])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_info_reports_location_size_files_and_entries_per_method(photo_folder, cache_dir, monkeypatch):
    monkeypatch.setattr(PHash, "cache_scores", True)  # as an expensive backend's are
    cluster(photo_folder, "phash", cache=True, workers=1)
    cluster(photo_folder, "phash", cache=True, workers=1, hash_size=16)
    n = n_images(photo_folder)

    report = info_json(cache_dir)
    assert report["location"] == str(cache_dir / CACHE_FILE)
    assert report["bytes_on_disk"] >= report["bytes_in_use"] > 0
    assert report["files"] == n
    assert [(m["method"], m["params"]["hash_size"], m["features"]) for m in report["methods"]] == \
        [("phash", 16, n), ("phash", 8, n)]
    assert all(m["scores"] > 0 and m["current"] for m in report["methods"])

    text = CliRunner().invoke(main, ["cache", "info"]).output  # $CLUSTERIMG_CACHE_DIR
    assert str(cache_dir / CACHE_FILE) in text
    assert f"Files: {n} with features" in text
    assert "hash_size=16" in text and "hash_size=8" in text and f"{n} features" in text


def test_info_without_a_cache_creates_nothing(tmp_path):
    folder = tmp_path / "none"
    out = CliRunner().invoke(main, ["cache", "info", "--cache-dir", str(folder)])
    assert out.exit_code == 0 and "No cache file yet" in out.output
    assert not folder.exists()


def test_prune_drops_entries_of_deleted_and_changed_files_only(photo_folder, cache_dir, monkeypatch):
    monkeypatch.setattr(PHash, "cache_scores", True)
    cluster(photo_folder, "phash", cache=True, workers=1)
    files = sorted(p for p in photo_folder.rglob("*") if p.is_file())
    before = stored_keys(cache_dir)
    assert before == {file_key(p) for p in files}
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        scores_before = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    gone, changed = files[0], files[1]
    gone_key, changed_key = file_key(gone), file_key(changed)
    gone.unlink()
    write_photo(changed, make_photo(99), quality=90)
    os.utime(changed, ns=(0, 10**18))  # a surely different mtime

    out = CliRunner().invoke(main, ["cache", "prune"])
    assert out.exit_code == 0, out.output
    assert "Pruned 2 gone or changed file(s): 2 features" in out.output
    assert stored_keys(cache_dir) == before - {gone_key, changed_key}
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        left = db.execute("SELECT a, b FROM scores").fetchall()
    assert len(left) < scores_before
    assert not {gone_key, changed_key} & {k for pair in left for k in pair}

    again = cluster(photo_folder, "phash", cache=True, workers=1)  # only the changed file is read again
    assert again.counts["features_read"] == 1
    assert again.counts["features_reused"] == len(files) - 2
    assert "Pruned 0 gone" in CliRunner().invoke(main, ["cache", "prune"]).output


def test_prune_drops_entries_of_other_clusterimg_versions(photo_folder, cache_dir, monkeypatch):
    import clusterimg.cache as cache_module

    monkeypatch.setattr(cache_module, "__version__", "0.0.1")
    cluster(photo_folder, "phash", cache=True, workers=1)
    monkeypatch.undo()
    monkeypatch.setenv("CLUSTERIMG_CACHE_DIR", str(cache_dir))
    cluster(photo_folder, "phash", cache=True, workers=1)
    assert sorted(m["current"] for m in info_json(cache_dir)["methods"]) == [False, True]
    counts = cache_admin.prune(cache_dir)
    assert counts["other_version_features"] == n_images(photo_folder)
    assert counts["files"] == 0  # the files themselves are unchanged
    assert [m["current"] for m in info_json(cache_dir)["methods"]] == [True]


def test_clear_yes_deletes_only_the_cache_files(photo_folder, cache_dir):
    cluster(photo_folder, "phash", cache=True, workers=1)
    (cache_dir / "notes.txt").write_text("a file of the user's that happens to be here")
    out = CliRunner().invoke(main, ["cache", "clear", "--yes"])
    assert out.exit_code == 0, out.output
    assert "Cache cleared" in out.output
    assert sorted(p.name for p in cache_dir.iterdir()) == ["notes.txt"]
    assert info_json(cache_dir)["exists"] is False


def test_clear_asks_and_no_keeps_everything(photo_folder, cache_dir):
    cluster(photo_folder, "phash", cache=True, workers=1)
    before = sorted((p.name, p.stat().st_size) for p in cache_dir.iterdir())
    out = CliRunner().invoke(main, ["cache", "clear"], input="n\n")
    assert out.exit_code == 0
    assert "Delete the cache" in out.output and "Nothing deleted" in out.output
    assert sorted((p.name, p.stat().st_size) for p in cache_dir.iterdir()) == before
    assert len(stored_keys(cache_dir)) == n_images(photo_folder)

    out = CliRunner().invoke(main, ["cache", "clear"], input="y\n")
    assert out.exit_code == 0 and "Cache cleared" in out.output
    assert not (cache_dir / CACHE_FILE).exists()


def test_cap_keeps_the_cache_under_it_and_evicts_least_recently_used_first(tmp_path, cache_dir, clock):
    a = folder_of(tmp_path / "a", range(1, 5), (480, 360))
    b = folder_of(tmp_path / "b", range(11, 15), (480, 360))
    c = folder_of(tmp_path / "c", range(21, 25), (480, 360))
    run = lambda folder, **kw: cluster(folder, "orb", cache=True, workers=1, **kw)  # large features

    clock["now"] = 100.0
    run(a)
    clock["now"] = 200.0
    run(b)
    clock["now"] = 300.0
    assert run(a).counts["features_reused"] == 4  # a is used again: now the most recent
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        two_folders = cache_admin.live_bytes(db)
    assert stored_keys(cache_dir) == keys_of(a) | keys_of(b)

    clock["now"] = 400.0
    cap = int(two_folders * 1.2)  # three folders do not fit, two do
    run(c, cache_max_size=cap)
    kept = stored_keys(cache_dir)
    assert keys_of(a) | keys_of(c) <= kept  # the recently used stay
    assert keys_of(b) - kept  # b, least recently used, goes first
    assert (cache_dir / CACHE_FILE).stat().st_size <= cap  # freed pages went back to the file system
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        assert cache_admin.live_bytes(db) <= cap
        assert not db.execute("SELECT COUNT(*) FROM scores WHERE a NOT IN (SELECT fkey FROM features) "
                              "OR b NOT IN (SELECT fkey FROM features)").fetchone()[0]  # no orphan scores


def test_cache_max_size_option_caps_a_run_and_bad_sizes_are_refused(tmp_path, cache_dir):
    photos = folder_of(tmp_path / "p", range(1, 9), (480, 360))
    args = ["run", str(photos), "-m", "orb", "--transfer", "none", "-q", "-j", "1"]
    out = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o1")])
    assert out.exit_code == 0, out.output
    full = (cache_dir / CACHE_FILE).stat().st_size
    assert len(stored_keys(cache_dir)) == 8

    cap = full // 2
    out = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o2"), "--cache-max-size", str(cap)])
    assert out.exit_code == 0, out.output
    assert (cache_dir / CACHE_FILE).stat().st_size <= cap
    assert 0 < len(stored_keys(cache_dir)) < 8

    out = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o3"), "--cache-max-size", "lots"])
    assert out.exit_code == 2 and "not a size" in out.output


def test_parse_size():
    assert cache_admin.parse_size("2G") == 2_000_000_000
    assert cache_admin.parse_size("500MB") == 500_000_000
    assert cache_admin.parse_size("1.5GiB") == int(1.5 * 2**30)
    assert cache_admin.parse_size("300k") == 300_000
    assert cache_admin.parse_size("0") == 0
    for bad in ("", "-1G", "2X", "G"):
        with pytest.raises(ValueError):
            cache_admin.parse_size(bad)


def test_an_older_schema_is_rebuilt_with_the_new_tables(photo_folder, cache_dir):
    cache_dir.mkdir(parents=True)
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        db.execute("CREATE TABLE features (mkey INTEGER, fkey INTEGER, data BLOB NOT NULL)")
        db.execute(f"PRAGMA user_version={SCHEMA - 1}")
    out = CliRunner().invoke(main, ["cache", "info"])
    assert "rebuilt by the next run" in out.output
    cluster(photo_folder, "phash", cache=True, workers=1)
    assert info_json(cache_dir)["files"] == n_images(photo_folder)
    with sqlite3.connect(cache_dir / CACHE_FILE) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


def test_threshold_accepts_the_cap_and_prints_it_in_the_run_command(photo_folder, cache_dir):
    out = CliRunner().invoke(main, ["threshold", str(photo_folder), "--no-input", "--examples", "0",
                                    "--cache-max-size", "300MB", "-q"])
    assert out.exit_code == 0, out.output
    assert out.output.strip().splitlines()[-1].endswith("--cache-max-size 300000000")
    assert info_json(cache_dir)["files"] == n_images(photo_folder)
