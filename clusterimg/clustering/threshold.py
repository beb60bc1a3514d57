"""Chaining similar pairs into clusters, and choosing a cluster's representative."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


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
