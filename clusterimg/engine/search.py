"""Candidate-pair generation: which pairs of a set of features get scored.

Either every pair (generated in blocks, never all at once) or the candidates a
backend's index proposes; in both cases the pairs are scored exactly and only
those scoring at least ``floor`` are kept. Grouping sees only the result.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from clusterimg.features.base import Method
from clusterimg.progress import NoBar

# score_fn(i, j) -> scores; called as score_fn(i, j, screen=True) for the
# screen of a backend that ``screens``.
ScoreFn = Callable[..., np.ndarray]
# Called with the number of pairs about to be scored; returns an object with
# update(k) usable as a context manager (a tqdm bar, or a no-op).
BarFactory = Callable[[int], "object"]
CHUNK = 4096  # pairs scored per call: bounds memory, lets progress move
# Pairs a screen left open are scored in full this many at a time: each
# costs a tenth of a second or more, and a pair joined by one chunk spares
# the later chunks' pairs between the same sets; two pieces per worker of
# the scorer's pool (at least 16 pairs each) still keep two workers busy.
OPEN_CHUNK = 32


def scoring(method: Method, screen: bool = False):
    """The backend's screen or its score: what the search asks for."""
    return method.screen if screen else method.score


def all_pairs(n: int, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair i < j of range(n), in chunks of about ``chunk`` pairs."""
    start = 0
    while start < n - 1:
        rows = [start]
        count = n - 1 - start
        while rows[-1] + 1 < n - 1 and count + (n - 2 - rows[-1]) <= chunk:
            rows.append(rows[-1] + 1)
            count += n - 1 - rows[-1]
        i = np.concatenate([np.full(n - 1 - r, r, dtype=np.int64) for r in rows])
        j = np.concatenate([np.arange(r + 1, n, dtype=np.int64) for r in rows])
        yield i, j
        start = rows[-1] + 1


def chunks(i: np.ndarray, j: np.ndarray, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for k in range(0, len(i), chunk):
        yield i[k : k + chunk], j[k : k + chunk]


def top_k_pairs(
    similarity_rows: Callable[[int, int], np.ndarray], n: int, k: int, block: int = 512, above: float | None = None,
    *, with_rank: bool = False,
):
    """Candidate pairs (i, j), i != j: each row's ``k`` most similar other rows
    (only those scoring more than ``above``, when given); with ``with_rank``
    also each pair's rank in its row (0: the row's nearest).

    ``similarity_rows(start, stop)`` returns the (stop - start, n) similarities
    of rows start..stop-1 to all rows; blocks keep memory at block * n. Ties
    are broken by index (stable sort), so the result is deterministic.
    """
    k = min(k, n - 1)
    if k <= 0:
        empty = np.empty(0, np.int64)
        return (empty, empty, empty) if with_rank else (empty, empty)
    out_i, out_j, out_r = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sim = np.asarray(similarity_rows(start, stop), dtype=np.float64)
        rows = np.arange(stop - start)
        sim[rows, rows + start] = -np.inf  # never propose a self pair
        # Rounding first makes the order immune to last-bit differences in BLAS.
        order = np.argsort(-np.round(sim, 6), axis=1, kind="stable")[:, :k]
        keep = np.ones(order.size, dtype=bool)
        if above is not None:
            keep = (np.take_along_axis(sim, order, axis=1) > above).ravel()
        out_i.append(np.repeat(rows + start, k)[keep])
        out_j.append(order.ravel()[keep])
        out_r.append(np.tile(np.arange(k), stop - start)[keep])
    pairs = (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64))
    return (*pairs, np.concatenate(out_r).astype(np.int64)) if with_rank else pairs


def rounds(proposed, n: int, chunk: int) -> tuple[int, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """(number of distinct pairs, their chunks) of a backend's candidates
    (i, j) or (i, j, rank): pairs (lo < hi) deduplicated, in chunks of at most
    ``chunk``, nearest ranks first (a pair proposed at several ranks comes at
    its nearest), by index within a rank: deterministic."""
    pi, pj = (np.asarray(a, dtype=np.int64) for a in proposed[:2])
    rank = np.asarray(proposed[2], dtype=np.int64) if len(proposed) > 2 else np.zeros(len(pi), np.int64)
    lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
    differ = lo != hi
    key, rank = lo[differ] * n + hi[differ], rank[differ]
    order = np.lexsort((key, rank))
    key, first = np.unique(key[order], return_index=True)  # each pair once, at its nearest rank
    rank = rank[order][first]
    order = np.argsort(rank, kind="stable")  # by rank, then (as unique sorted them) by key
    key, rank = key[order], rank[order]

    def pieces():
        for r in np.unique(rank):
            in_round = key[rank == r]
            yield from chunks(in_round // n, in_round % n, chunk)

    return len(key), pieces()


def find_pairs(
    method: Method,
    stacked,
    n: int,
    floor: float,
    *,
    exhaustive: bool = False,
    group: np.ndarray | None = None,
    score_fn: ScoreFn | None = None,
    bar: BarFactory | None = None,
    joined=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, score) with i < j and score >= floor among ``n`` stacked features.

    ``group`` (optional, one id per feature) excludes pairs within a group:
    the merge stage uses it to skip pairs its batches already compared.
    ``score_fn(i, j, screen=False)`` replaces the backend's scoring (the
    pipeline's cache uses it). ``joined`` (a union-find over the ``n``
    features, optional) is for backends whose scores are costly: a pair whose
    images it already holds in one set is not scored, and the pairs found are
    joined into it as they come, chunk by chunk, each image's nearest
    candidates first. The sets it ends with are those that scoring every
    candidate would give (a skipped pair could only join what is joined
    already); fewer pairs are returned. With ``joined``, a backend that
    ``screens`` has every candidate screened first and only the pairs the
    screen leaves open, between images still apart, scored in full.
    """
    score_fn = score_fn or (lambda a, b, screen=False: scoring(method, screen)(stacked, a, b))
    proposed = None if exhaustive else method.candidates(stacked, floor)
    chunk = getattr(method, "score_chunk", CHUNK)  # pairs per scoring call and progress step
    if proposed is None:
        total = n * (n - 1) // 2
        pieces: Iterator = all_pairs(n, chunk)
    else:
        total, pieces = rounds(proposed, n, chunk)
    screening = joined is not None and getattr(method, "screens", False)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    open_i, open_j = [], []  # pairs the screen left to the full score, in order

    def score(i, j, screen: bool) -> int:
        """Score pairs (skipping those within a group or already joined),
        keep the hits; returns how many the screen left open."""
        if group is not None:
            keep = group[i] != group[j]
            i, j = i[keep], j[keep]
        if joined is not None:
            keep = np.fromiter((joined.find(a) != joined.find(b) for a, b in zip(i.tolist(), j.tolist())),
                               dtype=bool, count=len(i))
            i, j = i[keep], j[keep]
        if not len(i):
            return 0
        s = np.asarray(score_fn(i, j, screen=True) if screen else score_fn(i, j), dtype=np.float64)
        later = np.isnan(s) if screen else np.zeros(len(s), dtype=bool)
        if later.any():
            open_i.append(i[later]), open_j.append(j[later])
            i, j, s = i[~later], j[~later], s[~later]
        hit = s >= floor
        found.append((i[hit], j[hit], s[hit]))
        if joined is not None:
            joined.union_pairs(i[hit], j[hit])
        return int(later.sum())

    with (bar or NoBar)(total) as shown:
        for i, j in pieces:
            shown.update(len(i) - score(i, j, screening))
        if open_i:
            for i, j in chunks(np.concatenate(open_i), np.concatenate(open_j), OPEN_CHUNK):
                score(i, j, False)
                shown.update(len(i))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return tuple(np.concatenate(parts) for parts in zip(*found))
