"""Pair scoring through the cache: stored scores are reused, new ones stored."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clusterimg.cache import Cache, file_key
from clusterimg.features.base import Method

# Pairs scored (and stored in the cache) at a time when a cache is in use.
SCORE_PIECE = 256


class PairScorer:
    """Scores pairs of images (global indices), taking stored scores from the
    cache and storing the ones it computes; without a cache, or for a backend
    whose scores are cheaper than a lookup, it only calls the backend."""

    def __init__(self, method: Method, files: Sequence[str], cache: Cache | None = None):
        self.method = method
        self.cache = cache if (cache is not None and method.cache_scores) else None
        self.keys = [file_key(f) for f in files] if self.cache is not None else []
        self.known = self.cache.get_scores([k for k in self.keys if k is not None]) if self.cache else {}
        self.computed = 0
        self.reused = 0

    def score(self, stacked, members: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Scores of pairs (i, j) of positions in ``stacked``, whose images are ``members``."""
        if self.cache is None:
            self.computed += len(i)
            return np.asarray(self.method.score(stacked, i, j), dtype=np.float64)
        out = np.empty(len(i), dtype=np.float64)
        missing, pair_keys = [], []
        for pos, (x, y) in enumerate(zip(members[i].tolist(), members[j].tolist())):
            a, b = self.keys[x], self.keys[y]
            key = None if a is None or b is None else (min(a, b), max(a, b))
            value = self.known.get(key) if key is not None else None
            if value is None:
                missing.append(pos)
                pair_keys.append(key)
            else:
                out[pos] = value
        self.reused += len(i) - len(missing)
        # Score the missing pairs in small pieces, each stored as soon as it is
        # done: Ctrl-C in a slow backend then loses at most one piece.
        for start in range(0, len(missing), SCORE_PIECE):
            m = np.asarray(missing[start : start + SCORE_PIECE], dtype=np.int64)
            fresh = np.asarray(self.method.score(stacked, i[m], j[m]), dtype=np.float64)
            out[m] = fresh
            self.computed += len(m)
            keep = [(key, float(v)) for key, v in zip(pair_keys[start : start + SCORE_PIECE], fresh) if key is not None]
            self.known.update(keep)
            self.cache.put_scores([k[0] for k, _ in keep], [k[1] for k, _ in keep], [v for _, v in keep])
        return out

    def score_fn(self, stacked, members: Sequence[int]):
        """A ``find_pairs`` score_fn for a stack of the images ``members``."""
        members = np.asarray(members, dtype=np.int64)
        return lambda i, j: self.score(stacked, members, i, j)
