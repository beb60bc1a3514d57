"""The clustering seam: what turns the features of a set of images into
clusters. Each model is one module of this package defining a subclass of
:class:`Clusterer`; dropping a new module here is all it takes to add one
(the API, the CLI's ``--cluster`` choice and its options find it).

A clusterer gets the backend, the features (in input order) and a pair
scorer that goes through the cache, and returns :class:`Groups`: indices of
the members of each cluster of two or more, the representative and each
member's score to it, the outliers, and whatever it wants to record in the
manifest (parameters chosen, a model-selection table). It never sees paths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from clusterimg.engine.scoring import PairScorer
from clusterimg.features.base import Feature, Method
from clusterimg.options import Configurable


@dataclass
class Group:
    members: list[int]  # indices into the features, sorted
    representative: int  # one of ``members``
    scores: list[float]  # each member's similarity to the representative, in [0, 1]


@dataclass
class Groups:
    groups: list[Group]  # clusters of two or more images
    outliers: list[int]  # images in no cluster
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest under "clustering"


class Clusterer(Configurable):
    """Base class of the clustering models."""

    summary: ClassVar[str]
    # Which backends it can cluster: "pairs" (any backend, through pair
    # scores) or "vector" (backends with one vector per image).
    needs: ClassVar[str] = "pairs"

    def cluster(self, method: Method, features: Sequence[Feature], scorer: PairScorer, *,
                threshold: float | None, batch_size: int, exhaustive: bool, bars) -> Groups:
        raise NotImplementedError
