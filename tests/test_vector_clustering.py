"""clustering/vector.py: each model on data whose answer is known, determinism, representatives."""
from __future__ import annotations

import numpy as np
import pytest

from clusterimg.clustering.vector import fit_model, prepare, reduce, relabel, representatives


def blobs_on_sphere(k=5, per=30, d=40, spread=0.15, seed=0):
    """k well-separated unit-vector clusters: orthogonal centres plus noise."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(d, k)))[0].T  # k orthonormal directions
    X = np.repeat(centres, per, axis=0) + rng.normal(scale=spread / np.sqrt(d), size=(k * per, d))
    y = np.repeat(np.arange(k), per)
    order = rng.permutation(len(X))
    return X[order], y[order]


def ari(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


@pytest.mark.parametrize("model,kw", [
    ("kmeans", {"k": 5}), ("gmm", {"k": 5}),
    ("agglomerative", {"k": 5}), ("agglomerative", {"k": 5, "linkage": "average"}),
    ("agglomerative", {"eps": 0.5, "linkage": "average"}),
    ("dbscan", {"eps": 0.3}), ("hdbscan", {})])
def test_models_recover_separated_blobs(model, kw):
    X, y = blobs_on_sphere()
    labels = fit_model(prepare(X, 20), model, **kw)
    assert ari(y, labels) == pytest.approx(1.0)
    assert (labels >= 0).all()


def test_dbscan_and_hdbscan_mark_a_far_point_as_noise():
    X, y = blobs_on_sphere()
    means = np.stack([X[y == c].mean(axis=0) for c in range(5)])
    far = np.random.default_rng(1).normal(size=(1, X.shape[1]))
    far -= far @ np.linalg.pinv(means) @ means  # orthogonal to every cluster: cosine distance ~1
    X = np.vstack([X, far])
    for model, kw in (("dbscan", {"eps": 0.3}), ("hdbscan", {})):
        labels = fit_model(X, model, **kw)
        assert labels[-1] == -1
        assert ari(y, labels[:-1]) == pytest.approx(1.0)


def test_deterministic_and_canonical_labels():
    X, _ = blobs_on_sphere(spread=2.0, seed=3)  # overlapping: k-means depends on its seed
    for model in ("kmeans", "gmm"):
        a = fit_model(X, model, k=6, seed=7)
        b = fit_model(X, model, k=6, seed=7)
        assert np.array_equal(a, b)
        sizes = np.bincount(a)
        assert list(sizes) == sorted(sizes, reverse=True)  # 0 is the largest cluster
    assert np.array_equal(relabel(np.array([5, 5, 2, 9, 9, 9, -1])), [1, 1, 2, 0, 0, 0, -1])


def test_reduce_and_prepare():
    X, _ = blobs_on_sphere(d=80)
    assert reduce(X, 10).shape == (150, 10)
    assert reduce(X, 100).shape == X.shape  # nothing to reduce
    assert np.array_equal(reduce(X, None), X)
    P = prepare(X, 10)
    assert np.allclose(np.linalg.norm(P, axis=1), 1.0)
    assert np.array_equal(P, prepare(X, 10))


def test_representative_is_nearest_the_centroid():
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1, -1])
    # Cluster 0's normalised mean points at about 11 degrees: row 1 (6 deg) is the nearest.
    assert representatives(X, labels) == {0: 1, 1: 3}


def test_bad_parameters_are_one_line_value_errors():
    X, _ = blobs_on_sphere()
    for model, kw, text in (("kmeans", {}, "needs --k"), ("spectral", {"k": 2}, "unknown clustering model"),
                            ("agglomerative", {"k": 2, "linkage": "median"}, "unknown linkage"),
                            ("dbscan", {"eps": -1}, "--eps")):
        with pytest.raises(ValueError, match=text):
            fit_model(X, model, **kw)
    assert fit_model(X[:1], "kmeans", k=3).tolist() == [0]
    assert len(fit_model(X[:0], "kmeans", k=3)) == 0
    assert len(set(fit_model(X[:4], "kmeans", k=10))) == 4  # k lowered to the number of rows
