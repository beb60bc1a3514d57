"""The run as a whole: discover -> decode + extract -> per-batch search and
grouping -> merge across batches -> representatives and member scores.

Writing the output is output.py's job; this module returns a plain result.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from clusterimg.cache import Cache
from clusterimg.clustering.threshold import group_features, summarise
from clusterimg.engine.extract import extract_features
from clusterimg.engine.scoring import PairScorer
from clusterimg.errors import ClusterimgError
from clusterimg.features.base import Method
from clusterimg.images import Skipped, discover
from clusterimg.progress import no_bar
from clusterimg.result import Result


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
    exclude_globs: Sequence[str] = (),
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
    paths, skipped = discover(root, recursive=recursive, exclude=exclude, exclude_globs=exclude_globs)
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
