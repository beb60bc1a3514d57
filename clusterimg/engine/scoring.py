"""Pair scoring through the cache: stored scores are reused, new ones stored.

For a backend whose pair scores cost milliseconds (``Method.parallel_scores``,
e.g. orb), the scorer also remembers every score of the run in memory (so the
representatives and the merge stage never score a pair twice, cache or not),
and scores the missing pairs in worker processes: the features are written
once to a temporary folder as flat arrays that every worker maps read-only
(one copy in memory, whatever the worker count), and only pair indices and
scores cross between processes. Scores come back in order and the main
process stores each piece in the cache as it arrives, so an interrupted run
keeps what it had scored, and the worker count never changes a result.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import numpy as np

from clusterimg.cache import Cache, file_key
from clusterimg.engine.search import scoring
from clusterimg.features.base import Feature, Method

# Pairs scored (and stored in the cache) at a time when a cache is in use.
SCORE_PIECE = 256
# Fewer missing pairs than this in one call are scored in the main process:
# a round trip to the workers would cost more than it saves (a backend may
# set its own ``min_pool_pairs``).
MIN_PAIRS_FOR_POOL = 16


class PairScorer:
    """Scores pairs of images (global indices), taking stored scores from the
    cache and storing the ones it computes; without a cache, or for a backend
    whose scores are cheaper than a lookup, it only calls the backend.

    ``features`` (every image's feature, by global index) and ``workers`` > 1
    let a ``parallel_scores`` backend score in worker processes; use the
    scorer as a context manager (or call :meth:`close`) to stop them.
    """

    def __init__(self, method: Method, files: Sequence[str], cache: Cache | None = None, *,
                 features: Sequence[Feature] | None = None, workers: int = 1):
        self.method = method
        self.cache = cache if (cache is not None and method.cache_scores) else None
        self.keys = [file_key(f) for f in files] if self.cache is not None else []
        self.known = self.cache.get_scores([k for k in self.keys if k is not None]) if self.cache else {}
        self.stored_before = set(self.known)  # "reused" counts these: scores an earlier run left in the cache
        self.computed = 0
        self.reused = 0
        # Scores of this run by global pair (a << 32 | b, a < b): only for
        # backends whose scores are worth remembering.
        self.remember = bool(getattr(method, "parallel_scores", False))
        self.memo: dict[int, float] = {}
        self.features = features
        self.workers = max(1, int(workers or 1))
        self._pool = None
        self._folder: str | None = None

    # -- lifetime --------------------------------------------------------------
    def __enter__(self) -> "PairScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the scoring workers (if any were started) and remove their shared features."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _abort(self) -> None:
        from clusterimg.engine.extract import _stop_workers

        pool, self._pool = self._pool, None
        if pool is not None:
            _stop_workers(pool)
        self.close()

    # -- scoring ---------------------------------------------------------------
    def score(self, stacked, members: np.ndarray, i: np.ndarray, j: np.ndarray, screen: bool = False) -> np.ndarray:
        """Scores of pairs (i, j) of positions in ``stacked``, whose images
        are ``members``. With ``screen``, the backend's screen replaces its
        score: a pair it leaves open comes back NaN and is neither stored nor
        remembered (stored and remembered scores are final, and are used)."""
        members = np.asarray(members, dtype=np.int64)
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        if self.cache is None and not self.remember:
            scores = np.asarray(scoring(self.method, screen)(_resolve(stacked), i, j), dtype=np.float64)
            self.computed += int(np.count_nonzero(~np.isnan(scores)))
            return scores
        gi, gj = members[i], members[j]
        out = np.empty(len(i), dtype=np.float64)
        missing, pair_keys, memo_keys = [], [], []
        lo, hi = np.minimum(gi, gj), np.maximum(gi, gj)
        flat = ((lo << 32) | hi).tolist() if self.remember else [None] * len(i)
        for pos, (x, y, m) in enumerate(zip(gi.tolist(), gj.tolist(), flat)):
            value = self.memo.get(m) if m is not None else None
            key = None
            if value is None and self.cache is not None:
                a, b = self.keys[x], self.keys[y]
                key = None if a is None or b is None else (min(a, b), max(a, b))
                value = self.known.get(key) if key is not None else None
                if value is not None and key in self.stored_before:
                    self.reused += 1
            if value is None:
                missing.append(pos)
                pair_keys.append(key)
                memo_keys.append(m)
            else:
                out[pos] = value
                if m is not None:
                    self.memo[m] = value
        if not missing:
            return out
        missing_arr = np.asarray(missing, dtype=np.int64)
        for start, fresh in self._score_missing(stacked, i[missing_arr], j[missing_arr],
                                                gi[missing_arr], gj[missing_arr], screen):
            stop = start + len(fresh)
            out[missing_arr[start:stop]] = fresh
            final = ~np.isnan(fresh)
            self.computed += int(final.sum())
            if self.remember:
                self.memo.update((m, v) for m, v, ok in zip(memo_keys[start:stop], fresh.tolist(), final) if ok)
            if self.cache is not None:
                keep = [(key, float(v)) for key, v, ok in zip(pair_keys[start:stop], fresh, final)
                        if key is not None and ok]
                self.known.update(keep)
                self.cache.put_scores([k[0] for k, _ in keep], [k[1] for k, _ in keep], [v for _, v in keep])
        return out

    def _score_missing(self, stacked, i, j, gi, gj, screen: bool):
        """Yield (offset, scores) for consecutive pieces of the pairs, in order:
        (i, j) positions in ``stacked`` for the main process, (gi, gj) global
        indices for the workers."""
        if self._parallel(len(i)):
            yield from self._score_in_workers(gi, gj, screen)
            return
        # Small pieces, each stored as soon as it is done: Ctrl-C in a slow
        # backend then loses at most one piece.
        piece = SCORE_PIECE if self.cache is not None else max(len(i), 1)
        stacked, score = _resolve(stacked), scoring(self.method, screen)
        for start in range(0, len(i), piece):
            yield start, np.asarray(score(stacked, i[start:start + piece], j[start:start + piece]),
                                    dtype=np.float64)

    def _parallel(self, count: int) -> bool:
        fewest = getattr(self.method, "min_pool_pairs", None) or MIN_PAIRS_FOR_POOL
        return (self.workers > 1 and self.features is not None and count >= fewest
                and bool(getattr(self.method, "parallel_scores", False)))

    def _score_in_workers(self, gi: np.ndarray, gj: np.ndarray, screen: bool):
        # Pieces small enough to keep both workers busy to the end of the call,
        # large enough that a round trip is negligible next to the scoring.
        piece = int(np.clip(len(gi) // (self.workers * 8), 16, SCORE_PIECE))
        starts = list(range(0, len(gi), piece))
        try:
            pool = self._start_pool()
            results = pool.map(_score_in_worker, [gi[s:s + piece] for s in starts], [gj[s:s + piece] for s in starts],
                               [screen] * len(starts))
            for start, fresh in zip(starts, results):
                yield start, np.asarray(fresh, dtype=np.float64)
        except BaseException as e:
            from concurrent.futures.process import BrokenProcessPool
            from clusterimg.errors import ClusterimgError

            self._abort()
            if isinstance(e, BrokenProcessPool):
                raise ClusterimgError(f"a worker process died ({e}); try again with --workers 1")
            if isinstance(e, OSError):  # no room for the shared features
                raise ClusterimgError(f"cannot share features with the workers ({e}); try again with --workers 1")
            raise

    def _start_pool(self):
        if self._pool is not None:
            return self._pool
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from clusterimg.engine.extract import _main_module_hidden

        self._folder = tempfile.mkdtemp(prefix="clusterimg-scores-", dir=_shared_tmp())
        layout = pack_features(self.features, self._folder)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_scorer,
                                   initargs=(self.method, self._folder, layout))
        with _main_module_hidden(self.method):
            # start every worker now, while __main__ is hidden
            list(pool.map(_ready, range(self.workers)))
        self._pool = pool
        return pool

    def score_fn(self, stacked, members: Sequence[int]):
        """A ``find_pairs`` score_fn for a stack of the images ``members``."""
        members = np.asarray(members, dtype=np.int64)
        return lambda i, j, screen=False: self.score(stacked, members, i, j, screen)

    def score_global(self, features: Sequence[Feature], i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Scores of pairs of global indices (``features`` is every image's feature)."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        if not len(i):
            return np.zeros(0)
        members = np.unique(np.concatenate([i, j]))
        stacked = _LazyStack(self.method, [features[k] for k in members.tolist()])
        return self.score(stacked, members, np.searchsorted(members, i), np.searchsorted(members, j))


class _LazyStack:
    """A stack built only if the main process scores a pair itself (the
    workers have their own)."""

    def __init__(self, method: Method, features):
        self.method, self.features, self.built = method, features, None

    def get(self):
        if self.built is None:
            self.built = self.method.stack(self.features)
        return self.built


def _resolve(stacked):
    return stacked.get() if isinstance(stacked, _LazyStack) else stacked


def _shared_tmp() -> str | None:
    """A RAM-backed temporary folder where there is one (Linux), else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# -- features shared with the workers ----------------------------------------------


def pack_features(features: Sequence[Feature], folder: str) -> dict:
    """Write features (arrays, or dicts of arrays) as one flat .npy file per
    field plus offsets; returns the layout :class:`PackedFeatures` needs."""
    if not len(features):
        return {"kind": "array", "fields": []}
    kind = "dict" if isinstance(features[0], dict) else "array"
    fields = sorted(features[0]) if kind == "dict" else [""]
    for name in fields:
        parts = [np.asarray(f[name] if kind == "dict" else f) for f in features]
        lengths = np.array([len(p) if p.ndim else 1 for p in parts], dtype=np.int64)
        parts = [p.reshape((1,) + p.shape) if not p.ndim else p for p in parts]
        flat = np.concatenate(parts) if len(parts) else np.zeros(0)
        np.save(os.path.join(folder, f"f_{name}.npy"), flat, allow_pickle=False)
        np.save(os.path.join(folder, f"o_{name}.npy"), np.concatenate([[0], np.cumsum(lengths)]), allow_pickle=False)
    scalar = {name: features[0][name].ndim == 0 if kind == "dict" else np.asarray(features[0]).ndim == 0
              for name in fields}
    return {"kind": kind, "fields": fields, "scalar": scalar}


class PackedFeatures(Sequence):
    """The features written by :func:`pack_features`, read through memory maps."""

    def __init__(self, folder: str, layout: dict):
        self.folder = folder  # shared by the workers: a backend may keep per-image results there too
        self.layout = layout
        self.flat = {n: np.load(os.path.join(folder, f"f_{n}.npy"), mmap_mode="r", allow_pickle=False)
                     for n in layout["fields"]}
        self.offsets = {n: np.load(os.path.join(folder, f"o_{n}.npy"), allow_pickle=False) for n in layout["fields"]}
        self.n = len(next(iter(self.offsets.values()))) - 1 if self.offsets else 0

    def __len__(self) -> int:
        return self.n

    def _field(self, name: str, k: int) -> np.ndarray:
        a, b = self.offsets[name][k], self.offsets[name][k + 1]
        value = self.flat[name][a:b]
        return value[0] if self.layout["scalar"][name] else value

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[x] for x in range(*k.indices(self.n))]
        if self.layout["kind"] == "dict":
            return {name: self._field(name, k) for name in self.layout["fields"]}
        return self._field("", k)


_worker_state: dict = {}


def _init_scorer(method: Method, folder: str, layout: dict) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    features = PackedFeatures(folder, layout)
    _worker_state["method"] = method
    _worker_state["stacked"] = method.stack(features)


def _ready(_: int) -> bool:
    return True


def _score_in_worker(i: np.ndarray, j: np.ndarray, screen: bool = False) -> np.ndarray:
    return np.asarray(scoring(_worker_state["method"], screen)(_worker_state["stacked"], i, j), dtype=np.float64)
