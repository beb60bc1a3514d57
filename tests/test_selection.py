"""clustering/selection.py: the automatic choice on data whose answer is known."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clusterimg.clustering.selection import (
    calinski_harabasz, cluster_in_batches, davies_bouldin, select, silhouette)
from tests.test_vector_clustering import ari, blobs_on_sphere


def test_finds_five_blobs():
    X, y = blobs_on_sphere(k=5, per=30, d=40)
    s = select(X, seed=0)
    assert s.chosen["k"] == 5
    assert ari(y, s.labels) == pytest.approx(1.0)
    chosen = [row for row in s.table if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["k"] == 5
    for key in ("silhouette", "calinski_harabasz", "davies_bouldin", "reference_silhouette", "gap"):
        assert key in chosen[0]
    json.dumps(s.to_json())  # the manifest entry is plain JSON
    lines = s.lines()
    assert len(lines) == len(s.table) + 1 and sum("<- chosen" in line for line in lines) == 1


def test_elongated_cloud_with_classes_is_not_cut_in_two():
    # Eight tight classes strung along one long axis: every plain metric
    # prefers cutting the string in two halves (k = 2); the gap over the
    # reference (which has the same long axis) finds the eight classes.
    rng = np.random.default_rng(4)
    d = 20
    axis = np.zeros(d)
    axis[0] = 1.0
    centres = np.array([t * 3.0 * axis + rng.normal(scale=0.8, size=d) for t in range(8)])
    X = np.repeat(centres, 25, axis=0) + rng.normal(scale=0.25, size=(200, d)) + 10 * np.eye(d)[1]
    y = np.repeat(np.arange(8), 25)
    s = select(X, seed=0)
    assert s.chosen["k"] == 8
    assert ari(y, s.labels) > 0.95


def test_deterministic():
    X, _ = blobs_on_sphere(k=6, spread=1.5, seed=2)  # overlapping: choices are close calls
    a, b = select(X, seed=3), select(X, seed=3)
    assert np.array_equal(a.labels, b.labels) and a.chosen == b.chosen
    assert [r["silhouette"] for r in a.table] == [r["silhouette"] for r in b.table]


def test_model_subset_and_fixed_k():
    X, y = blobs_on_sphere(k=4)
    s = select(X, models=["agglomerative"], seed=0)
    assert s.chosen["model"] == "agglomerative" and s.chosen["k"] == 4
    assert {r["model"] for r in s.table} == {"agglomerative"}
    s = select(X, models=["kmeans"], k_min=3, k_max=3)
    assert s.chosen["k"] == 3 and len(set(s.labels)) == 3
    with pytest.raises(ValueError, match="unknown clustering model"):
        select(X, models=["spectral"])
    assert select(X[:3]).labels.tolist() == [0, 0, 0]


def test_metrics_match_their_definitions():
    # Two clusters on a line: {0, 1} and {10, 11} (distance = |a - b|).
    # Point 0: a = 1, b = mean(10, 11) = 10.5, s = 9.5/10.5; by symmetry every point is alike
    # except that 1 has b = 9.5: s = 8.5/9.5.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    D = np.abs(x - x.T)
    labels = np.array([0, 0, 1, 1])
    expect = (2 * 9.5 / 10.5 + 2 * 8.5 / 9.5) / 4
    assert silhouette(D, labels) == pytest.approx(expect)
    # Noise counts 0 and is left out of the others' means: with point 3 noise,
    # point 2 is a cluster of one (0), points 0 and 1 keep b = 10 and 9.
    assert silhouette(D, np.array([0, 0, 1, -1])) == pytest.approx((9 / 10 + 8 / 9) / 4)
    # CH: centroids 0.5 and 10.5, grand mean 5.5: between 2*25 + 2*25 = 100 over (k - 1) = 1;
    # within 4 * 0.25 = 1 over (n - k) = 2: 100 / 0.5 = 200.
    assert calinski_harabasz(x, labels) == pytest.approx(200.0)
    # DB: spreads 0.5 and 0.5, centroids 10 apart: (0.5 + 0.5) / 10 = 0.1.
    assert davies_bouldin(x, labels) == pytest.approx(0.1)


def test_batches_merge_clusters_split_across_batches():
    X, y = blobs_on_sphere(k=4, per=40, seed=5)  # shuffled: every batch holds every blob
    fn = lambda B: select(B, models=["kmeans", "agglomerative"], seed=0)
    labels = cluster_in_batches(X, 50, fn)
    assert ari(y, labels) == pytest.approx(1.0)
    assert len(set(labels)) == 4
    assert np.array_equal(cluster_in_batches(X, 0, fn), select(X, models=["kmeans", "agglomerative"]).labels)
