"""Keeping the cache in bounds: which file each entry belongs to, when it was
last used, a size cap with least-recently-used eviction, and what
``clusterimg cache info|prune|clear`` report and do.

Three tables sit beside ``features`` and ``scores`` in the cache file:

- ``methods``: method key (integer) -> the readable method key (backend,
  params, feature version, clusterimg version), for ``cache info``;
- ``files``: file key -> the resolved path, size and mtime (ns) it was made
  from, so ``cache prune`` can tell a file that is gone or changed;
- ``used``: (method key, file key) -> when a run last used it (seconds since
  the epoch); eviction drops the least recently used entries first.

A run marks every file it reads (:func:`track`); when it closes the cache,
and every few seconds while it writes, entries are evicted while the file
holds more than the cap, down to 90 % of it, so eviction happens seldom and
in one go. The cap counts the pages in use; freed pages are handed back to
the file system (the cache file uses SQLite's incremental auto-vacuum).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Sequence

MAX_SIZE_ENV = "CLUSTERIMG_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 2_000_000_000  # 2 GB
EVICT_TO = 0.9  # after eviction the cache holds at most this share of the cap
CHECK_SECONDS = 10.0  # while a run writes, the size is checked this often

TABLES = """
CREATE TABLE IF NOT EXISTS methods (mkey INTEGER PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    fkey INTEGER PRIMARY KEY, path BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS used (
    mkey INTEGER, fkey INTEGER, at REAL NOT NULL, PRIMARY KEY (mkey, fkey)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_at ON used (at);
"""

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


def now() -> float:
    return time.time()


# -- sizes -----------------------------------------------------------------------------


def parse_size(text: str | int) -> int:
    """Bytes from ``2G``, ``500MB``, ``1.5GiB``, ``300k`` or a plain number
    (K/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024). ``0`` means no cap.
    ValueError with a readable message otherwise."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"{text!r} is not a size (write e.g. 2G, 500MB, 1.5GiB, or 0 for no cap)")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value < 0:
        raise ValueError(f"{text!r} is not a size: it is negative")
    return value


def format_size(n: int | float) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} bytes"


def default_max_size() -> int:
    """$CLUSTERIMG_CACHE_MAX_SIZE if set (a bad value is ignored), else 2 GB."""
    text = os.environ.get(MAX_SIZE_ENV)
    if text:
        try:
            return parse_size(text)
        except ValueError:
            pass
    return DEFAULT_MAX_SIZE


# -- hooks used by cache.Cache -------------------------------------------------------------


def setup(db: sqlite3.Connection, mkey: int | None = None, key: str | None = None) -> None:
    """Create the tables (idempotent) and name the method key."""
    db.executescript(TABLES)
    if mkey is not None and key is not None:
        db.execute("INSERT OR IGNORE INTO methods VALUES (?, ?)", (mkey, key))
    db.commit()


def track(db: sqlite3.Connection, mkey: int, files: Sequence[str], keys: Sequence[int | None],
          at: float | None = None) -> None:
    """Remember each file key's path, size and mtime, and mark (mkey, key) used now."""
    at = now() if at is None else at
    file_rows, used_rows = [], []
    for name, key in zip(files, keys):
        if key is None:
            continue
        try:  # the path as given (absolute; realpath would double the cost of file_key)
            st = os.stat(name)
        except OSError:
            continue
        file_rows.append((key, os.fsencode(os.path.abspath(name)), st.st_size, st.st_mtime_ns))
        used_rows.append((mkey, key, at))
    db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", file_rows)
    db.executemany("INSERT OR REPLACE INTO used VALUES (?, ?, ?)", used_rows)
    db.commit()


def live_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the cache file in use (pages less free pages)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


def evict(db: sqlite3.Connection, max_bytes: int) -> int:
    """If the cache holds more than ``max_bytes`` (0: no cap), drop the least
    recently used feature entries (and their pair scores) until it holds at
    most ``EVICT_TO`` of it. Returns the number of feature entries dropped."""
    if max_bytes <= 0 or live_bytes(db) <= max_bytes:
        return 0
    target = int(max_bytes * EVICT_TO)
    dropped = 0
    for _ in range(10):  # each round estimates what to drop, then measures
        live = live_bytes(db)
        if live <= target:
            break
        n, data_bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM features").fetchone()
        if n == 0:
            db.execute("DELETE FROM scores")  # scores without features: nothing else is left to drop
            db.commit()
            break
        overhead = max(0, live - data_bytes) / n  # scores, keys and pages, shared out per entry
        rows = db.execute(
            "SELECT f.mkey, f.fkey, length(f.data), COALESCE(u.at, 0) AS at FROM features f "
            "LEFT JOIN used u ON u.mkey = f.mkey AND u.fkey = f.fkey ORDER BY at, f.mkey, f.fkey")
        doomed, freed = [], 0.0
        for mkey, fkey, length, _ in rows:
            doomed.append((mkey, fkey))
            freed += length + overhead
            if freed >= live - target:
                break
        rows.close()
        _drop(db, doomed)
        dropped += len(doomed)
    db.execute("DELETE FROM files WHERE fkey NOT IN (SELECT fkey FROM used)")
    db.commit()
    _shrink(db)
    return dropped


def _drop(db: sqlite3.Connection, entries: list[tuple[int, int]]) -> None:
    """Delete feature entries, their pair scores and their use marks."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (mkey INTEGER, fkey INTEGER, PRIMARY KEY (mkey, fkey))")
    db.execute("DELETE FROM doomed")
    db.executemany("INSERT OR IGNORE INTO doomed VALUES (?, ?)", entries)
    db.execute("DELETE FROM features WHERE (mkey, fkey) IN (SELECT mkey, fkey FROM doomed)")
    db.execute("DELETE FROM scores WHERE (mkey, a) IN (SELECT mkey, fkey FROM doomed) "
               "OR (mkey, b) IN (SELECT mkey, fkey FROM doomed)")
    db.execute("DELETE FROM used WHERE (mkey, fkey) IN (SELECT mkey, fkey FROM doomed)")
    db.execute("DELETE FROM doomed")
    db.commit()


def _shrink(db: sqlite3.Connection) -> None:
    """Give freed pages back to the file system (executescript steps the
    pragma to its end: each step frees one page)."""
    try:
        db.executescript("PRAGMA incremental_vacuum;")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:
        pass  # another process holds the file: it shrinks another time


# -- the cache command -----------------------------------------------------------------------


def cache_files(folder: Path) -> list[Path]:
    """The files of the cache in ``folder`` (database, its WAL and shared
    memory, and damaged copies moved aside), nothing else."""
    from clusterimg.cache import CACHE_FILE

    names = [CACHE_FILE, CACHE_FILE + "-wal", CACHE_FILE + "-shm"]
    found = [folder / n for n in names if (folder / n).is_file()]
    if folder.is_dir():
        found += sorted(p for p in folder.glob(CACHE_FILE + ".corrupt-*") if p.is_file())
    return found


def _connect(folder: Path) -> sqlite3.Connection | None:
    """The cache database, or None when there is none or it is of another
    schema (it is rebuilt by the next run). ClusterimgError when unreadable."""
    from clusterimg.cache import CACHE_FILE, SCHEMA
    from clusterimg.errors import ClusterimgError

    path = folder / CACHE_FILE
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(path, timeout=30)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
            db.close()
            return None
        db.executescript(TABLES)
        return db
    except sqlite3.Error as e:
        raise ClusterimgError(f"cannot read the cache {path}: {e} (`clusterimg cache clear` removes it)")


def describe_method(key: str | None) -> dict:
    """Backend name, params, feature version and clusterimg version of a method key."""
    if key is None:
        return {"method": "?", "params": {}, "feature_version": None, "clusterimg": None}
    try:
        data = json.loads(key)
    except ValueError:
        return {"method": "?", "params": {}, "feature_version": None, "clusterimg": None}
    return {"method": data.get("method", "?"), "params": data.get("params", {}),
            "feature_version": data.get("feature_version"), "clusterimg": data.get("clusterimg")}


def info(folder: Path) -> dict:
    """What the cache in ``folder`` holds: location, bytes on disk, bytes in
    use, the cap, the number of files, and per method its entries."""
    from clusterimg import __version__
    from clusterimg.cache import CACHE_FILE

    folder = Path(folder)
    on_disk = sum(p.stat().st_size for p in cache_files(folder))
    report = {"location": str(folder / CACHE_FILE), "exists": (folder / CACHE_FILE).is_file(),
              "bytes_on_disk": on_disk, "bytes_in_use": 0, "max_size": default_max_size(),
              "files": 0, "methods": [], "outdated": False}
    db = _connect(folder)
    if db is None:
        report["outdated"] = report["exists"]
        return report
    try:
        report["bytes_in_use"] = live_bytes(db)
        report["files"] = db.execute("SELECT COUNT(DISTINCT fkey) FROM features").fetchone()[0]
        names = dict(db.execute("SELECT mkey, key FROM methods"))
        features = {m: (n, b) for m, n, b in db.execute(
            "SELECT mkey, COUNT(*), COALESCE(SUM(length(data)), 0) FROM features GROUP BY mkey")}
        scores = dict(db.execute("SELECT mkey, COUNT(*) FROM scores GROUP BY mkey"))
        last = dict(db.execute("SELECT mkey, MAX(at) FROM used GROUP BY mkey"))
    finally:
        db.close()
    for mkey in sorted(set(features) | set(scores)):
        described = describe_method(names.get(mkey))
        n, nbytes = features.get(mkey, (0, 0))
        report["methods"].append(dict(
            described, features=n, feature_bytes=nbytes, scores=scores.get(mkey, 0), last_used=last.get(mkey),
            current=described["clusterimg"] == __version__))
    report["methods"].sort(key=lambda m: (m["method"], json.dumps(m["params"], sort_keys=True, default=str)))
    return report


def prune(folder: Path) -> dict:
    """Drop the entries that can never be used again: those of files that are
    gone or changed since (path, size and mtime differ), and those made by
    another clusterimg version. Returns counts of what was dropped."""
    from clusterimg import __version__

    folder = Path(folder)
    counts = {"files": 0, "features": 0, "scores": 0, "other_version_features": 0, "bytes_freed": 0}
    db = _connect(folder)
    if db is None:
        return counts
    try:
        before = live_bytes(db)
        stale = []
        for fkey, path, size, mtime_ns in db.execute("SELECT fkey, path, size, mtime_ns FROM files").fetchall():
            try:
                st = os.stat(os.fsdecode(path))
                unchanged = st.st_size == size and st.st_mtime_ns == mtime_ns
            except (OSError, ValueError):
                unchanged = False
            if not unchanged:
                stale.append(fkey)
        counts["files"] = len(stale)
        db.execute("CREATE TEMP TABLE IF NOT EXISTS stale (fkey INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM stale")
        db.executemany("INSERT INTO stale VALUES (?)", ((k,) for k in stale))
        counts["features"] = db.execute("DELETE FROM features WHERE fkey IN (SELECT fkey FROM stale)").rowcount
        counts["scores"] = db.execute(
            "DELETE FROM scores WHERE a IN (SELECT fkey FROM stale) OR b IN (SELECT fkey FROM stale)").rowcount
        db.execute("DELETE FROM used WHERE fkey IN (SELECT fkey FROM stale)")
        db.execute("DELETE FROM files WHERE fkey IN (SELECT fkey FROM stale)")
        old = [m for m, key in db.execute("SELECT mkey, key FROM methods").fetchall()
               if describe_method(key)["clusterimg"] != __version__]
        for mkey in old:
            counts["other_version_features"] += db.execute("DELETE FROM features WHERE mkey=?", (mkey,)).rowcount
            counts["scores"] += db.execute("DELETE FROM scores WHERE mkey=?", (mkey,)).rowcount
            db.execute("DELETE FROM used WHERE mkey=?", (mkey,))
            db.execute("DELETE FROM methods WHERE mkey=?", (mkey,))
        db.execute("DELETE FROM files WHERE fkey NOT IN (SELECT fkey FROM used)")
        db.commit()
        _shrink(db)
        counts["bytes_freed"] = max(0, before - live_bytes(db))
    finally:
        db.close()
    return counts


def clear(folder: Path) -> int:
    """Delete the cache files in ``folder`` (nothing else there); returns bytes freed."""
    freed = 0
    for path in cache_files(Path(folder)):
        size = path.stat().st_size
        path.unlink()
        freed += size
    return freed
