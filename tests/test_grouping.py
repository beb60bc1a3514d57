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


class Screened(Labels):
    """Labels with a cheap screen: pairs of different labels are settled (0)
    by the screen, pairs of one label only where both indices are even (1);
    the other pairs of one label are left open (NaN) for the full score."""
    screens = True

    def __init__(self):
        super().__init__()
        self.screened = []

    def screen(self, stacked, i, j):
        self.screened += list(zip(i.tolist(), j.tolist()))
        same = stacked[i] == stacked[j]
        settled = ~same | ((i % 2 == 0) & (j % 2 == 0))
        return np.where(settled, same.astype(float), np.nan)


def test_screened_pairs_get_the_full_score_only_between_images_still_apart():
    labels = np.array([0, 1, 0, 2, 1, 0, 0, 2, 1, 0, 0, 1])
    full, uf_full = Labels(), UnionFind(len(labels))
    find_pairs(full, labels, len(labels), 0.5, joined=uf_full)
    method, uf = Screened(), UnionFind(len(labels))
    i, j, s = find_pairs(method, labels, len(labels), 0.5, joined=uf)
    assert uf.groups() == uf_full.groups() == [[0, 2, 5, 6, 9, 10], [1, 4, 8, 11], [3, 7]]
    assert np.all(s == 1) and len(i) == len(j) == len(s)
    settled = {p for p in method.screened if labels[p[0]] != labels[p[1]] or (p[0] % 2 == 0 and p[1] % 2 == 0)}
    # every pair scored in full was left open by the screen, and none twice
    assert not settled & set(method.scored) and len(set(method.scored)) == len(method.scored)
    assert set(method.scored) <= set(method.screened)
    # the screen joined 0, 2, 6, 10 (even members of label 0) before any full score:
    # no full score between two of them
    assert not {(a, b) for a, b in method.scored if {a, b} <= {0, 2, 6, 10}}
    assert len(method.scored) < len(full.scored)


def test_a_backend_that_screens_is_scored_in_full_without_a_union_find():
    labels = np.array([0, 1, 0, 2, 1, 0])
    method = Screened()
    i, j, s = find_pairs(method, labels, len(labels), 0.5)
    assert method.screened == [] and np.all(s == 1)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 5), (1, 4), (2, 5)]
