"""Threshold clustering: pairs scoring at least the threshold are chained
(union-find), batch by batch, then across batches through representatives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from clusterimg.engine.scoring import PairScorer
from clusterimg.engine.search import find_pairs
from clusterimg.features.base import Feature, Method
from clusterimg.progress import no_bar
from clusterimg.clustering.base import Clusterer, Group, Groups

# Clusters up to this size get their representative from the full matrix of
# member similarities; larger ones from the sum of their found pair scores.
# Backends whose pair scores cost milliseconds (``parallel_scores``) always
# take the second way: the full matrix would score every pair of a cluster
# that the search took care to leave out.
FULL_MATRIX_MAX = 32


class UnionFind:
    """Disjoint sets over 0..n-1. The root of a set is always its smallest
    member, so the result never depends on the order of unions."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True

    def union_pairs(self, i: Iterable[int], j: Iterable[int]) -> None:
        for a, b in zip(i, j):
            self.union(int(a), int(b))

    def groups(self, members: Iterable[int] | None = None) -> list[list[int]]:
        """All sets (singletons included) over ``members`` (default: all),
        each sorted, in order of their smallest member."""
        by_root: dict[int, list[int]] = {}
        for x in (range(len(self.parent)) if members is None else members):
            by_root.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in by_root.values()), key=lambda g: g[0])


def medoid(similarity: np.ndarray) -> int:
    """Index of the member most similar to all the others (largest row sum of
    a symmetric similarity matrix); ties go to the lowest index."""
    sums = similarity.sum(axis=1) - np.diag(similarity)
    return int(np.argmax(sums))  # argmax returns the first maximum


def order_clusters(clusters: Sequence[Sequence[str]]) -> list[list[str]]:
    """Largest first, ties by first member path: the numbering of the output."""
    return sorted((sorted(c) for c in clusters), key=lambda c: (-len(c), c[0]))



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


def representatives(
    method: Method, features: Sequence[Feature], groups: Sequence[Sequence[int]], strength: np.ndarray | None,
    scorer: PairScorer,
) -> list[tuple[int, np.ndarray]]:
    """(position of the representative in its group, each member's score to
    it) for every group. The representative is the member most similar to
    all the others (the medoid of the full similarity matrix for groups up to
    FULL_MATRIX_MAX, else the member with the largest sum of found pair
    scores), not the first file listed: it stands for the group in the merge
    stage, so it should be its most typical image. The pairs of all groups go
    to the scorer in one call (so its workers share the work, and pairs it
    has already scored are looked up, not scored again)."""
    plans, all_i, all_j, total = [], [], [], 0
    full_max = 0 if method.parallel_scores else FULL_MATRIX_MAX
    for members in groups:
        members = np.asarray(members, dtype=np.int64)
        if len(members) == 1:
            plans.append(("one", None, 0, 0))
            continue
        if len(members) <= full_max:
            iu, ju = np.triu_indices(len(members), k=1)
            all_i.append(members[iu]), all_j.append(members[ju])
            plans.append(("full", (iu, ju), total, len(iu)))
            total += len(iu)
        else:
            rep = int(np.argmax(strength[members]))
            others = np.array([p for p in range(len(members)) if p != rep], dtype=np.int64)
            all_i.append(np.full(len(others), members[rep], dtype=np.int64)), all_j.append(members[others])
            plans.append(("rep", (rep, others), total, len(others)))
            total += len(others)
    scores = (scorer.score_global(features, np.concatenate(all_i), np.concatenate(all_j))
              if all_i else np.zeros(0))
    out = []
    for members, (kind, extra, start, count) in zip(groups, plans):
        got = scores[start:start + count]
        if kind == "one":
            out.append((0, np.ones(1)))
        elif kind == "full":
            iu, ju = extra
            sim = np.eye(len(members))
            sim[iu, ju] = sim[ju, iu] = got
            rep = medoid(sim)
            out.append((rep, sim[rep]))
        else:
            rep, others = extra
            row = np.ones(len(members))
            row[others] = got
            out.append((rep, row))
    return out


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
    batches = batch_ranges(n, batch_size)
    uf = UnionFind(n)
    edges = Edges()
    for number, batch in enumerate(batches, 1):
        label = f"pairs (batch {number}/{len(batches)})" if len(batches) > 1 else "pairs"
        i, j, s = search_batch(method, [features[k] for k in batch], batch, threshold, exhaustive, scorer,
                               bars(label))
        uf.union_pairs(i, j)
        edges.add(i, j, s)
    if len(batches) > 1:
        strength = edges.strength(n)
        reps, rep_batch = [], []
        found = [(number, members) for number, batch in enumerate(batches) for members in uf.groups(batch)]
        for (number, members), (pos, _) in zip(found, representatives(
                method, features, [m for _, m in found], strength, scorer)):
            reps.append(members[pos])
            rep_batch.append(number)
        i, j, s = merge_stage(method, [features[k] for k in reps], reps, rep_batch, threshold, exhaustive, scorer,
                              bars("pairs (merge stage)"))
        uf.union_pairs(i, j)
        edges.add(i, j, s)
    return uf.groups(), edges


# The two stages as functions of their own, so that another engine
# (engine/dask_run.py) runs the same code on the same inputs.


def batch_ranges(n: int, batch_size: int) -> list[range]:
    """The first stage's batches: consecutive ranges of ``batch_size`` images (0: one batch)."""
    size = batch_size if batch_size and batch_size > 0 else max(n, 1)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def search_batch(method: Method, features: Sequence[Feature], batch: range, threshold: float, exhaustive: bool,
                 scorer: PairScorer, bar=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1 on one batch: its pairs at or above ``threshold`` (global
    indices; ``features`` are the batch's, in order)."""
    stacked = method.stack(features)
    i, j, s = find_pairs(method, stacked, len(batch), threshold, exhaustive=exhaustive,
                         score_fn=scorer.score_fn(stacked, batch), bar=bar,
                         joined=UnionFind(len(batch)) if method.parallel_scores else None)
    return i + batch.start, j + batch.start, s


def merge_stage(method: Method, features: Sequence[Feature], reps: Sequence[int], rep_batch: Sequence[int],
                threshold: float, exhaustive: bool, scorer: PairScorer, bar=None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 2: pairs at or above ``threshold`` between representatives
    (global indices ``reps``, their ``features``) of different batches."""
    reps_arr = np.asarray(reps, dtype=np.int64)
    stacked = method.stack(features)
    i, j, s = find_pairs(method, stacked, len(reps), threshold, exhaustive=exhaustive,
                         group=np.asarray(rep_batch), score_fn=scorer.score_fn(stacked, reps), bar=bar,
                         joined=UnionFind(len(reps)) if method.parallel_scores else None)
    return reps_arr[i], reps_arr[j], s


class GraphClusterer(Clusterer):
    """Pairs scoring at least the threshold are joined, and joined pairs
    chain (if A~B and B~C, all three are one cluster): the model for
    near-duplicates, where "alike" is a property of a pair."""

    name = "graph"
    summary = "pairs at least --threshold alike are joined, chained (union-find), batch by batch, then merged"

    def cluster(self, method, features, scorer, *, threshold, batch_size, exhaustive, bars) -> Groups:
        groups, edges = group_features(method, features, threshold, batch_size, exhaustive, bars, scorer)
        strength = edges.strength(len(features))
        outliers = [members[0] for members in groups if len(members) == 1]
        clusters = [members for members in groups if len(members) > 1]
        found = [Group(members, members[rep], [round(float(x), 4) for x in scores])
                 for members, (rep, scores) in zip(clusters, representatives(
                     method, features, clusters, strength, scorer))]
        return Groups(found, outliers)
