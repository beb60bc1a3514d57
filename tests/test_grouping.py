"""Union-find chains, representatives, output order, and the pair search."""
from __future__ import annotations

import numpy as np

from clusterimg.clustering.threshold import UnionFind, medoid, order_clusters
from clusterimg.engine.search import all_pairs, find_pairs


def test_union_find_chains_pairs_transitively():
    uf = UnionFind(6)
    uf.union_pairs([0, 1, 4], [1, 2, 5])  # 0~1, 1~2 chain; 4~5
    assert uf.groups() == [[0, 1, 2], [3], [4, 5]]


def test_union_find_result_does_not_depend_on_union_order():
    pairs = [(5, 3), (3, 9), (1, 0), (9, 7), (2, 8)]
    a, b = UnionFind(10), UnionFind(10)
    a.union_pairs(*zip(*pairs))
    b.union_pairs(*zip(*reversed(pairs)))
    assert a.groups() == b.groups()
    assert [a.find(k) for k in range(10)] == [b.find(k) for k in range(10)]
    assert a.find(9) == 3  # the root is the smallest member


def test_groups_over_a_subset():
    uf = UnionFind(5)
    uf.union(3, 4)
    assert uf.groups(range(2, 5)) == [[2], [3, 4]]


def test_medoid_is_the_member_most_similar_to_the_others():
    sim = np.array([[1.0, 0.9, 0.5], [0.9, 1.0, 0.9], [0.5, 0.9, 1.0]])
    assert medoid(sim) == 1
    assert medoid(np.ones((3, 3))) == 0  # ties: the first


def test_clusters_are_ordered_by_size_then_first_path():
    assert order_clusters([["z", "y"], ["c", "b", "a"], ["b2", "a2"]]) == [["a", "b", "c"], ["a2", "b2"], ["y", "z"]]


def test_all_pairs_covers_every_pair_once_in_small_chunks():
    for n in (0, 1, 2, 5, 31):
        got = [(a, b) for i, j in all_pairs(n, chunk=7) for a, b in zip(i.tolist(), j.tolist())]
        assert got == [(a, b) for a in range(n) for b in range(a + 1, n)]


class Numbers:
    """A toy backend: features are numbers, similarity 1 - |a - b|."""
    def score(self, stacked, i, j):
        return 1 - np.abs(stacked[i] - stacked[j])

    def candidates(self, stacked, floor):
        return None


def test_find_pairs_keeps_pairs_at_or_above_the_floor_and_skips_same_group():
    values = np.array([0.0, 0.05, 0.5, 0.52, 0.9])
    i, j, s = find_pairs(Numbers(), values, 5, 0.9)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 3)]
    assert np.all(s >= 0.9)
    i, j, _ = find_pairs(Numbers(), values, 5, 0.9, group=np.array([0, 0, 1, 2, 2]))
    assert list(zip(i.tolist(), j.tolist())) == [(2, 3)]


class Labels:
    """A toy backend with costly scores: images of one label score 1, others
    0; each image's candidates are its 4 nearest: its own label first."""
    score_chunk = 4  # small chunks, so joins made early spare later pairs

    def __init__(self):
        self.scored = []

    def score(self, stacked, i, j):
        self.scored += list(zip(i.tolist(), j.tolist()))
        return (stacked[i] == stacked[j]).astype(float)

    def candidates(self, stacked, floor):
        n, k = len(stacked), 4
        nearest = [sorted((b for b in range(n) if b != a), key=lambda b: (stacked[b] != stacked[a], b))[:k]
                   for a in range(n)]
        return np.repeat(np.arange(n), k), np.concatenate(nearest), np.tile(np.arange(k), n)


def test_joined_pairs_are_not_scored_and_the_groups_stay_the_same():
    labels = np.array([0, 1, 0, 2, 1, 0, 0, 2, 1, 0])
    runs = {}
    for skip in (False, True):
        method, uf = Labels(), UnionFind(len(labels))
        i, j, _ = find_pairs(method, labels, len(labels), 0.5, joined=uf if skip else None)
        if not skip:
            uf.union_pairs(i, j)
        runs[skip] = (uf.groups(), method.scored)
    assert runs[False][0] == runs[True][0] == [[0, 2, 5, 6, 9], [1, 4, 8], [3, 7]]
    every, spared = runs[False][1], runs[True][1]
    assert len(set(every)) == len(every) and len(set(spared)) == len(spared)  # no pair twice
    assert set(spared) < set(every)  # fewer pairs, all of them candidates
    # each image's nearest candidate comes first: the first round is rank 0
    first = {(min(a, b), max(a, b)) for a, b in enumerate([2, 4, 0, 7, 1, 0, 0, 3, 1, 0])}
    assert set(spared[:len(first)]) == first
