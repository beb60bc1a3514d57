"""What a clustering returns: clusters with members, scores and
representative; outliers; skipped files with reasons."""
from __future__ import annotations

from dataclasses import dataclass, field

from clusterimg.images import Skipped


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
