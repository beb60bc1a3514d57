"""A cache of features and pair scores, so that re-thresholding, a run after
`clusterimg threshold`, and a run started again after Ctrl-C cost little.

One SQLite file (``cache.sqlite``) in a user cache folder. What is stored, and
under which keys:

- features: per (method key, file key). The method key names everything a
  feature depends on (backend name, its ``feature_version``, its params, the
  clusterimg version); the file key is the resolved path, size and mtime (ns).
  A changed file has a new file key, so it is read again; another version or
  other params have another method key, so their entries are never used.
  Features are stored without pickle: ``np.savez`` of the array, or of each
  array of a dict feature.
- pair scores (backends with ``cache_scores``): every pair that was actually
  scored, whatever its score, keyed by (method key, the two file keys). A pair
  scored once is never scored again; a pair never proposed at an earlier
  threshold (a candidate search depends on the threshold) is scored when it
  first is. Storing all verified pairs, not only those above some floor, is
  what lets a later run at a *lower* threshold tell "scored and low" from
  "never scored".

- bookkeeping (``cache_admin.py``): each file key's path, size and mtime, and
  when a run last used each (method key, file key), for ``clusterimg cache
  prune`` and for the size cap (least recently used entries are evicted).

Writes are buffered and committed every ``COMMIT_EVERY`` items or
``COMMIT_SECONDS``, whichever comes first, so a run killed part-way loses at
most a second of work; a buffer is only ever complete items, so it is also
committed when the run stops on Ctrl-C.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from clusterimg import __version__, cache_admin
from clusterimg.errors import ClusterimgError
from clusterimg.features.base import Feature, Method

CACHE_FILE = "cache.sqlite"
ENV_VAR = "CLUSTERIMG_CACHE_DIR"
SCHEMA = 2  # bump when the tables change: an older file is then started afresh
COMMIT_EVERY = 64
COMMIT_SECONDS = 1.0
DICT_MARK = "__dict__"  # the one name a dict feature's arrays may not use
ARRAY_NAME = "__array__"


def default_cache_dir() -> Path:
    """$CLUSTERIMG_CACHE_DIR, else $XDG_CACHE_HOME/clusterimg, else ~/.cache/clusterimg."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "clusterimg"


# -- keys -----------------------------------------------------------------------


def _int64_digest(text: str | bytes) -> int:
    """A signed 64-bit integer digest (SQLite integers are signed 64-bit)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def method_key(method: Method) -> str:
    """Everything a backend's features and scores depend on, as one string."""
    # Every param (a backend may add its model's digest), less the options
    # that change neither features nor scores.
    unkeyed = {o.name for o in method.options if not o.changes_features}
    return json.dumps(
        {"method": method.name, "feature_version": method.feature_version,
         "params": {k: method.params[k] for k in sorted(method.params) if k not in unkeyed},
         "clusterimg": __version__},
        sort_keys=True, default=str,
    )


def file_key(path: str | os.PathLike) -> int | None:
    """Identity of a file's current content: resolved path + size + mtime_ns.
    None if the file cannot be stat'ed (it is then simply not cached)."""
    try:
        resolved = os.path.realpath(path)
        st = os.stat(resolved)
    except OSError:
        return None
    # the path as the bytes the file system holds: a name that is not valid
    # UTF-8 (surrogate escapes) hashes like any other; UTF-8 names keep their keys
    return _int64_digest(os.fsencode(resolved) + f"\0{st.st_size}\0{st.st_mtime_ns}".encode())


# -- features without pickle ------------------------------------------------------


def encode_feature(feature: Feature) -> bytes | None:
    """Bytes of an array or a dict of arrays; None for anything else (not cached)."""
    buf = io.BytesIO()
    try:
        if isinstance(feature, np.ndarray):
            if feature.dtype.hasobject:
                return None
            np.savez(buf, **{ARRAY_NAME: feature})
        elif isinstance(feature, dict):
            arrays = {str(k): np.asarray(v) for k, v in feature.items()}
            if DICT_MARK in arrays or any(a.dtype.hasobject for a in arrays.values()):
                return None
            np.savez(buf, **arrays, **{DICT_MARK: np.zeros(0)})
        else:
            return None
    except (TypeError, ValueError):
        return None
    return buf.getvalue()


def decode_feature(data: bytes) -> Feature:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        if ARRAY_NAME in z.files:
            return z[ARRAY_NAME]
        return {name: z[name] for name in z.files if name != DICT_MARK}


# -- the store -------------------------------------------------------------------


class Cache:
    """Features and scores of one backend configuration (``method``)."""

    def __init__(self, folder: Path, method: Method, warn: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.warn = warn or (lambda msg: print(f"Warning: {msg}", file=sys.stderr))
        self.db: sqlite3.Connection | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                self._connect()
            except sqlite3.OperationalError:
                raise
            except sqlite3.DatabaseError as e:  # not a database, or a damaged one
                self._move_aside(e)
                self._connect()
        except (OSError, sqlite3.Error) as e:
            raise ClusterimgError(f"cannot open the cache in {self.folder}: {e} (use --cache-dir or --no-cache)")
        self.method = method
        self.mkey = _int64_digest(method_key(method))
        self._features: list[tuple] = []
        self._scores: list[tuple] = []
        self._last_commit = time.monotonic()

    def _connect(self) -> None:
        self.db = sqlite3.connect(self.folder / CACHE_FILE, timeout=30)
        try:
            self._setup()
        except BaseException:
            self.db.close()
            self.db = None
            raise

    def _move_aside(self, error: Exception) -> None:
        """Rename a damaged cache file (and its WAL) so a new one is built;
        the user is told where the old one went."""
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.folder / f"{CACHE_FILE}.corrupt-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            source = self.folder / (CACHE_FILE + suffix)
            if source.exists():
                os.replace(source, Path(str(target) + suffix))
        self.warn(f"the cache file {self.folder / CACHE_FILE} is damaged ({error}); moved it aside to "
                  f"{target.name} and started a new one")

    def _damaged(self, error: sqlite3.DatabaseError) -> None:
        """A damaged cache found while running: move it aside, go on without."""
        self._features, self._scores = [], []
        try:
            self._move_aside(error)
        except OSError as e:
            self.warn(f"the cache file {self.folder / CACHE_FILE} is damaged ({error}) and cannot be moved aside "
                      f"({e.strerror or e}); this run goes on without the cache")
            return
        self.warn("this run goes on without the cache")

    def _setup(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")  # readers and one writer at once; crash-safe
        self.db.execute("PRAGMA synchronous=NORMAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA:
            self.db.executescript("DROP TABLE IF EXISTS features; DROP TABLE IF EXISTS scores;")
            self._start_afresh()
            self.db.execute(f"PRAGMA user_version={SCHEMA}")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS features (
                mkey INTEGER, fkey INTEGER, data BLOB NOT NULL, PRIMARY KEY (mkey, fkey)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS scores (
                mkey INTEGER, a INTEGER, b INTEGER, score REAL NOT NULL, PRIMARY KEY (mkey, a, b)) WITHOUT ROWID;
            """
        )
        self.db.commit()
        cache_admin.setup(self.db)

    # -- features
    def get_features(self, fkeys: Sequence[int | None]) -> dict[int, Feature]:
        """Stored features of the given file keys (those that have one)."""
        wanted = [k for k in fkeys if k is not None]
        found: dict[int, Feature] = {}
        if self.db is None:
            return found
        try:
            self._read_features(wanted, found)
        except sqlite3.OperationalError as e:
            raise ClusterimgError(f"cannot read the cache in {self.folder}: {e} (use --cache-dir or --no-cache)")
        except sqlite3.DatabaseError as e:
            self._damaged(e)
            found.clear()
        return found

    def _read_features(self, wanted: list[int], found: dict[int, Feature]) -> None:
        for start in range(0, len(wanted), 500):  # stay under SQLite's variable limit
            part = wanted[start : start + 500]
            rows = self.db.execute(
                f"SELECT fkey, data FROM features WHERE mkey=? AND fkey IN ({','.join('?' * len(part))})",
                (self.mkey, *part),
            )
            for fkey, data in rows:
                try:
                    found[fkey] = decode_feature(data)
                except (ValueError, OSError, KeyError):
                    pass  # unreadable entry: extract again (it is replaced)

    def put_feature(self, fkey: int | None, feature: Feature) -> None:
        data = None if fkey is None else encode_feature(feature)
        if data is not None:
            self._features.append((self.mkey, fkey, data))
            self._maybe_commit()

    # -- scores
    def get_scores(self, fkeys: Sequence[int]) -> dict[tuple[int, int], float]:
        """Stored scores of pairs among ``fkeys``, as {(a, b): score} with a < b."""
        if self.db is None:
            return {}
        try:
            return self._read_scores(fkeys)
        except sqlite3.OperationalError as e:
            raise ClusterimgError(f"cannot read the cache in {self.folder}: {e} (use --cache-dir or --no-cache)")
        except sqlite3.DatabaseError as e:
            self._damaged(e)
            return {}

    def _read_scores(self, fkeys: Sequence[int]) -> dict[tuple[int, int], float]:
        keys = sorted(set(fkeys))
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (k INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM wanted")
        self.db.executemany("INSERT INTO wanted VALUES (?)", ((k,) for k in keys))
        rows = self.db.execute(
            "SELECT s.a, s.b, s.score FROM wanted w JOIN scores s ON s.mkey=? AND s.a=w.k "
            "WHERE s.b IN (SELECT k FROM wanted)",
            (self.mkey,),
        ).fetchall()
        self.db.execute("DELETE FROM wanted")
        # The temp-table writes opened a transaction, and the SELECT made it
        # hold a snapshot of the file: end it, or this run's next write fails
        # at once ("database is locked") when another run wrote meanwhile.
        self.db.commit()
        return {(a, b): s for a, b, s in rows}

    def put_scores(self, a: Iterable[int], b: Iterable[int], s: Iterable[float]) -> None:
        """Store scores of pairs of file keys (each pair in either order)."""
        for x, y, v in zip(a, b, s):
            x, y = int(x), int(y)
            self._scores.append((self.mkey, min(x, y), max(x, y), float(v)))
        self._maybe_commit()

    # -- size cap and bookkeeping (clusterimg/cache_admin.py)
    max_size: int | None = None  # bytes; None: $CLUSTERIMG_CACHE_MAX_SIZE or 2 GB; 0: no cap
    _last_cap_check = 0.0

    def _start_afresh(self) -> None:
        """A new or rebuilt cache file: drop the bookkeeping tables, and let
        freed pages go back to the file system (incremental auto-vacuum)."""
        self.db.executescript("DROP TABLE IF EXISTS methods; DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS used;")
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.commit()
        try:
            self.db.execute("VACUUM")  # the file is empty now: cheap, and it applies auto_vacuum
        except sqlite3.OperationalError:
            pass  # another process has it open: the cap still holds, the file shrinks less

    def track(self, files: Sequence[str], fkeys: Sequence[int | None]) -> None:
        """Note which file each key stands for (for `cache prune`) and that
        this run uses it now (for least-recently-used eviction)."""
        if getattr(self, "db", None) is None:
            return
        try:
            self.db.execute("INSERT OR IGNORE INTO methods VALUES (?, ?)", (self.mkey, method_key(self.method)))
            cache_admin.track(self.db, self.mkey, files, fkeys)
        except sqlite3.DatabaseError:
            self.db.rollback()  # bookkeeping only: the run goes on (untracked entries are evicted first)

    def enforce_cap(self, force: bool = False) -> int:
        """Evict least recently used entries if the cache is over its cap
        (checked at most every few seconds unless ``force``)."""
        if getattr(self, "db", None) is None:
            return 0
        if not force and time.monotonic() - self._last_cap_check < cache_admin.CHECK_SECONDS:
            return 0
        self._last_cap_check = time.monotonic()
        cap = cache_admin.default_max_size() if self.max_size is None else self.max_size
        try:
            return cache_admin.evict(self.db, cap)
        except sqlite3.DatabaseError:
            self.db.rollback()
            return 0  # locked by another run (or damaged): a later check evicts

    # -- writing
    def _maybe_commit(self) -> None:
        if (len(self._features) >= COMMIT_EVERY or len(self._scores) >= COMMIT_EVERY * 64
                or time.monotonic() - self._last_commit >= COMMIT_SECONDS):
            self.commit()

    def commit(self) -> None:
        if self.db is None:
            self._features, self._scores = [], []
            return
        try:
            self._write()
        except sqlite3.OperationalError as e:  # disk full, read-only, locked too long
            raise ClusterimgError(f"cannot write the cache in {self.folder}: {e} (use --cache-dir or --no-cache)")
        except sqlite3.DatabaseError as e:
            self._damaged(e)

    def _write(self) -> None:
        if self._features:
            self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)", self._features)
        if self._scores:
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", self._scores)
        self.db.commit()
        self._features, self._scores = [], []
        self._last_commit = time.monotonic()
        self.enforce_cap()

    def close(self) -> None:
        """Commit what is buffered (complete items only) and close."""
        try:
            self.commit()
            self.enforce_cap(force=True)
        finally:
            if self.db is not None:
                self.db.close()
                self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_cache(method: Method, folder: Path | None, enabled: bool = True,
               warn: Callable[[str], None] | None = None, max_size: int | None = None) -> Cache | None:
    """The cache for ``method`` in ``folder`` (default: the user cache folder), or None when disabled.
    ``warn`` receives one-line warnings (a damaged cache file moved aside); default: stderr.
    ``max_size``: the cap in bytes (None: $CLUSTERIMG_CACHE_MAX_SIZE or 2 GB; 0: no cap)."""
    if not enabled:
        return None
    cache = Cache(folder if folder is not None else default_cache_dir(), method, warn)
    cache.max_size = max_size
    return cache
