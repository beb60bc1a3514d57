"""The run as a whole: discover -> decode + extract -> per-batch search and
grouping -> merge across batches -> representatives and member scores.

Writing the output is output.py's job; this module returns a plain result.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from clusterimg.cache import Cache, file_key
from clusterimg.errors import ClusterimgError, ImageReadError
from clusterimg.clustering.threshold import UnionFind, medoid, order_clusters
from clusterimg.images import Skipped, discover
from clusterimg.features.base import Feature, Method
from clusterimg.engine.search import NoBar, find_pairs

# Clusters up to this size get their representative from the full matrix of
# member similarities; larger ones from the sum of their found pair scores.
FULL_MATRIX_MAX = 32
# Below this many images a process pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 64
# Pairs scored (and stored in the cache) at a time when a cache is in use.
SCORE_PIECE = 256


@dataclass
class Cluster:
    members: list[str]  # sorted relative paths
    representative: str
    scores: dict[str, float]  # member -> similarity to the representative


@dataclass
class Result:
    clusters: list[Cluster]  # in output order: largest first, ties by first path
    outliers: list[str]
    skipped: list[Skipped]
    images: int  # images decoded and compared
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # work done vs taken from the cache: features_read / _reused, pairs_scored / _reused
    counts: dict[str, int] = field(default_factory=dict)


def no_bar(desc: str):
    """A bar factory that shows nothing."""
    return NoBar


def tqdm_bars(enabled: bool) -> Callable[[str], Callable[[int], object]]:
    """bars(desc)(total) -> a tqdm bar on stderr, or a silent stand-in."""
    if not enabled:
        return no_bar
    from tqdm import tqdm

    def bars(desc: str):
        return lambda total: tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    return bars


# -- feature extraction -------------------------------------------------------

_worker_method: Method | None = None


def _init_worker(method: Method) -> None:
    global _worker_method
    _worker_method = method
    # Ctrl-C reaches the whole process group: workers ignore it and the parent
    # stops them, so the user sees one message and no worker tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)  # one process per core already; nested threads only fight


def extract_one(method: Method, path: str) -> tuple[Feature | None, str | None]:
    """(feature, None) or (None, one-line reason): one bad file never stops a folder."""
    try:
        return method.feature(path), None
    except ImageReadError as e:
        return None, str(e)
    except MemoryError:
        return None, "out of memory while reading this image"
    except Exception as e:  # a backend failing on one odd image must not end the run
        return None, f"feature extraction failed: {type(e).__name__}: {e}"


def _extract_in_worker(path: str):
    return extract_one(_worker_method, path)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool now: drop queued work and terminate the workers rather than
    wait for their current images (they ignore SIGINT)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except Exception:  # already gone
            pass


def _extract_iter(method: Method, files: Sequence[str], workers: int):
    """Yield (feature, reason) for ``files`` in order, over ``workers`` processes."""
    if workers <= 1 or len(files) < MIN_IMAGES_FOR_POOL:
        for path in files:
            yield extract_one(method, path)
        return
    chunksize = max(1, min(32, len(files) // (workers * 8)))
    # forkserver, not fork: forking a process whose threads (OpenCV's, BLAS's)
    # hold locks can leave a worker deadlocked, e.g. when clusterimg runs
    # inside a bigger program.
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(method,))
    try:
        yield from pool.map(_extract_in_worker, files, chunksize=chunksize)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def extract_features(
    method: Method, files: Sequence[str], workers: int, bar=no_bar(""), cache: Cache | None = None,
    counts: dict[str, int] | None = None,
) -> list[tuple[Feature | None, str | None]]:
    """Features of ``files`` (absolute paths), in order, over ``workers`` processes.

    With a cache, stored features of unchanged files are loaded instead, and
    each new one is stored as soon as it arrives, so an interrupted run keeps
    what it had read. ``counts`` (optional) receives features_read / features_reused.
    """
    keys = [file_key(f) for f in files] if cache is not None else [None] * len(files)
    stored = cache.get_features(keys) if cache is not None else {}
    results: list = [None] * len(files)
    todo = []
    for k, key in enumerate(keys):
        if key is not None and key in stored:
            results[k] = (stored[key], None)
        else:
            todo.append(k)
    if counts is not None:
        counts.update(features_read=len(todo), features_reused=len(files) - len(todo))
    with bar(len(files)) as shown:
        shown.update(len(files) - len(todo))
        for k, item in zip(todo, _extract_iter(method, [files[k] for k in todo], workers)):
            results[k] = item
            if cache is not None and item[0] is not None:
                cache.put_feature(keys[k], item[0])
            shown.update(1)
    return results


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


# -- grouping -------------------------------------------------------------------


@dataclass
class Edges:
    """All pairs found at or above the threshold, as global indices."""

    i: list[np.ndarray] = field(default_factory=list)
    j: list[np.ndarray] = field(default_factory=list)
    s: list[np.ndarray] = field(default_factory=list)

    def add(self, i, j, s) -> None:
        self.i.append(np.asarray(i, np.int64)), self.j.append(np.asarray(j, np.int64)), self.s.append(np.asarray(s))

    def strength(self, n: int) -> np.ndarray:
        """Sum of found pair scores per image."""
        total = np.zeros(n)
        for i, j, s in zip(self.i, self.j, self.s):
            np.add.at(total, i, s)
            np.add.at(total, j, s)
        return total


def similarity_to(
    method: Method, features: Sequence[Feature], members: Sequence[int], rep: int, scorer: PairScorer
) -> np.ndarray:
    """Scores of every member against member ``rep`` (positions in ``members``)."""
    stacked = method.stack([features[k] for k in members])
    others = np.array([p for p in range(len(members)) if p != rep], dtype=np.int64)
    scores = np.ones(len(members))
    if len(others):
        scores[others] = scorer.score(stacked, np.asarray(members), np.full(len(others), rep, dtype=np.int64), others)
    return scores


def choose_representative(
    method: Method, features: Sequence[Feature], members: Sequence[int], strength: np.ndarray | None,
    scorer: PairScorer,
) -> tuple[int, np.ndarray]:
    """(position of the representative in ``members``, each member's score to it).

    The representative is the member most similar to all the others, not the
    first file listed: it stands for the cluster in the merge stage, so it
    should be its most typical image.
    """
    if len(members) == 1:
        return 0, np.ones(1)
    if len(members) <= FULL_MATRIX_MAX:
        stacked = method.stack([features[k] for k in members])
        iu, ju = np.triu_indices(len(members), k=1)
        sim = np.eye(len(members))
        sim[iu, ju] = sim[ju, iu] = scorer.score(
            stacked, np.asarray(members), iu.astype(np.int64), ju.astype(np.int64))
        rep = medoid(sim)
        return rep, sim[rep]
    rep = int(np.argmax(strength[np.asarray(members)]))
    return rep, similarity_to(method, features, members, rep, scorer)


def group_features(
    method: Method,
    features: Sequence[Feature],
    threshold: float,
    batch_size: int,
    exhaustive: bool = False,
    bars=no_bar,
    scorer: PairScorer | None = None,
) -> tuple[list[list[int]], Edges]:
    """Two-stage grouping. Returns the clusters (lists of indices, singletons
    included) and the pairs found.

    Stage 1 searches each batch on its own and chains its pairs (union-find).
    Stage 2 compares one representative per batch cluster, and every batch
    outlier, across batches, and joins the clusters they stand for.
    """
    scorer = scorer or PairScorer(method, [])
    n = len(features)
    size = batch_size if batch_size and batch_size > 0 else max(n, 1)
    batches = [range(start, min(start + size, n)) for start in range(0, n, size)]
    uf = UnionFind(n)
    edges = Edges()
    for number, batch in enumerate(batches, 1):
        stacked = method.stack([features[k] for k in batch])
        label = f"pairs (batch {number}/{len(batches)})" if len(batches) > 1 else "pairs"
        i, j, s = find_pairs(method, stacked, len(batch), threshold, exhaustive=exhaustive,
                             score_fn=scorer.score_fn(stacked, batch), bar=bars(label))
        i, j = i + batch.start, j + batch.start
        uf.union_pairs(i, j)
        edges.add(i, j, s)
    if len(batches) > 1:
        strength = edges.strength(n)
        reps, rep_batch = [], []
        for number, batch in enumerate(batches):
            for members in uf.groups(batch):
                pos, _ = choose_representative(method, features, members, strength, scorer)
                reps.append(members[pos])
                rep_batch.append(number)
        reps_arr = np.asarray(reps, dtype=np.int64)
        stacked = method.stack([features[k] for k in reps])
        i, j, s = find_pairs(
            method, stacked, len(reps), threshold, exhaustive=exhaustive,
            group=np.asarray(rep_batch), score_fn=scorer.score_fn(stacked, reps), bar=bars("pairs (merge stage)"),
        )
        uf.union_pairs(reps_arr[i], reps_arr[j])
        edges.add(reps_arr[i], reps_arr[j], s)
    return uf.groups(), edges


def summarise(
    method: Method, features: Sequence[Feature], paths: Sequence[str], groups: list[list[int]], edges: Edges,
    scorer: PairScorer | None = None,
) -> tuple[list[Cluster], list[str]]:
    """Clusters (ordered for output, with representatives and scores) and outliers."""
    scorer = scorer or PairScorer(method, [])
    strength = edges.strength(len(features))
    clusters, outliers = [], []
    for members in groups:
        if len(members) == 1:
            outliers.append(paths[members[0]])
            continue
        rep, scores = choose_representative(method, features, members, strength, scorer)
        names = [paths[k] for k in members]
        clusters.append(
            Cluster(members=names, representative=names[rep],
                    scores={p: round(float(sc), 4) for p, sc in zip(names, scores)})
        )
    by_members = {tuple(c.members): c for c in clusters}
    ordered = [by_members[tuple(m)] for m in order_clusters([c.members for c in clusters])]
    return ordered, sorted(outliers)


def cluster_folder(
    root: Path,
    method: Method,
    threshold: float,
    *,
    batch_size: int = 1000,
    recursive: bool = True,
    workers: int = 1,
    exhaustive: bool = False,
    exclude: Path | None = None,
    bars=no_bar,
    cache: Cache | None = None,
) -> Result:
    """Everything from the input folder to the clusters; writes nothing to the
    output (the cache, when given, receives features and scores as they come)."""
    started = time.perf_counter()
    if not root.exists():
        raise ClusterimgError(f"input folder not found: {root}", exit_code=2)
    if not root.is_dir():
        raise ClusterimgError(f"input is not a folder: {root}", exit_code=2)
    if not os.access(root, os.R_OK | os.X_OK):
        raise ClusterimgError(f"input folder cannot be read (permission denied): {root}", exit_code=2)
    paths, skipped = discover(root, recursive=recursive, exclude=exclude)
    timings = {"discover": time.perf_counter() - started}

    t = time.perf_counter()
    counts: dict[str, int] = {}
    extracted = extract_features(method, [str(root / p) for p in paths], workers, bars("reading images"), cache, counts)
    good_paths, features = [], []
    for path, (feature, reason) in zip(paths, extracted):
        if feature is None:
            skipped.append(Skipped(path, reason or "unreadable"))
        else:
            good_paths.append(path)
            features.append(feature)
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    scorer = PairScorer(method, [str(root / p) for p in good_paths], cache)
    groups, edges = group_features(method, features, threshold, batch_size, exhaustive, bars, scorer)
    clusters, outliers = summarise(method, features, good_paths, groups, edges, scorer)
    timings["group"] = time.perf_counter() - t
    return Result(
        clusters=clusters,
        outliers=outliers,
        skipped=sorted(skipped, key=lambda s: s.path),
        images=len(good_paths),
        seconds=time.perf_counter() - started,
        timings=timings,
        counts=dict(counts, pairs_scored=scorer.computed, pairs_reused=scorer.reused),
    )
