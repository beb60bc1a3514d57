"""Clustering models for vector features (CNN embeddings, pixels, HOG, ...).

Pure functions on an (n, d) float matrix, one row per image; scikit-learn
does the fitting and scipy builds the merge trees of agglomerative
clustering (both imported lazily, so the near-duplicate backends never pay
for them). Everything is deterministic: every randomised step takes ``seed``,
and labels are renumbered canonically (largest cluster 0, ties by first
member), so the same vectors and options always give the same labels.
Label -1 marks noise / outliers (DBSCAN and HDBSCAN).

Geometry: the vectors are compared by cosine. :func:`prepare` L2-normalises
the rows, reduces them with PCA (:func:`reduce`) and normalises again, so
Euclidean distances between prepared rows order pairs like cosine distances;
``ward`` (which needs Euclidean distances) works on those, and average /
complete / single linkage and DBSCAN use the cosine distance directly.
"""
from __future__ import annotations

import numpy as np

MODELS = ("kmeans", "agglomerative", "dbscan", "hdbscan", "gmm")
LINKAGES = ("ward", "average", "complete", "single")
DEFAULT_PCA = 64  # dimensions kept before clustering (tringn: 2048 -> 50)
DEFAULT_MIN_SAMPLES = 5
KMEANS_INITS = 3  # k-means++ restarts; the best inertia is kept


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float64."""
    X = np.asarray(X, dtype=np.float64)
    if X.size == 0:
        return X.reshape(len(X), -1)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def _pca_for(X: np.ndarray, pca: int | None, seed: int):
    """The sklearn PCA that reduces ``X`` to ``pca`` dimensions, or None when
    ``X`` stays as it is (no ``pca``, no more dimensions than that, or under
    3 rows); fewer components when there are fewer rows than ``pca``."""
    n, d = X.shape if X.ndim == 2 else (len(X), 0)
    if not pca or d <= pca or n < 3:
        return None
    from sklearn.decomposition import PCA

    components = min(pca, n - 1, d)
    # Exact SVD for small matrices; the seeded randomised solver (a few power
    # iterations, deterministic for a seed, and 10x faster at 2,000 x 1,280)
    # once both sides are well above the components kept.
    solver = "randomized" if min(n, d) > 4 * components and n * d > 500_000 else "full"
    return PCA(n_components=components, svd_solver=solver, random_state=seed)


def reduce(X: np.ndarray, pca: int | None = DEFAULT_PCA, seed: int = 0) -> np.ndarray:
    """PCA of the rows to ``pca`` dimensions (float64), as :func:`_pca_for`
    says; the rows unchanged (as float64) where it gives none."""
    X = np.asarray(X, dtype=np.float64)
    model = _pca_for(X, pca, seed)
    if model is None:
        return X
    with single_thread():
        return model.fit_transform(X)


def fit_projection(X: np.ndarray, pca: int | None = DEFAULT_PCA, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The PCA :func:`reduce` fits to ``X``, as (mean, components), to place
    new rows in the same space with :func:`project` (for the randomised
    solver, ``project`` of ``X`` itself is close to, not equal to, what
    ``reduce`` returns); None when :func:`reduce` leaves ``X`` as it is."""
    X = np.asarray(X, dtype=np.float64)
    model = _pca_for(X, pca, seed)
    if model is None:
        return None
    with single_thread():
        model.fit(X)
    return model.mean_, model.components_


def project(X: np.ndarray, projection: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Rows of ``X`` in the space of a :func:`fit_projection` (unchanged for None)."""
    X = np.asarray(X, dtype=np.float64)
    if projection is None:
        return X
    mean, components = projection
    return (X - mean) @ components.T


def prepare(X: np.ndarray, pca: int | None = DEFAULT_PCA, seed: int = 0) -> np.ndarray:
    """What the models cluster: rows L2-normalised, PCA-reduced, normalised again."""
    return l2_normalize(reduce(l2_normalize(X), pca, seed))


def relabel(labels: np.ndarray) -> np.ndarray:
    """Canonical labels: 0 the largest cluster, then by size, ties by the
    first member's index; -1 (noise) stays -1."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), -1, dtype=np.int64)
    kept = np.unique(labels[labels >= 0])
    order = sorted(kept, key=lambda c: (-int(np.sum(labels == c)), int(np.argmax(labels == c))))
    for new, old in enumerate(order):
        out[labels == old] = new
    return out


def default_eps(X: np.ndarray, min_samples: int) -> float:
    """DBSCAN radius when none is given: the median cosine distance of each
    vector to its ``min_samples``-th nearest neighbour (the knee a k-distance
    plot is usually read at, taken at its middle)."""
    Xn = l2_normalize(X)
    dist = np.clip(1.0 - Xn @ Xn.T, 0.0, 2.0)
    kth = min(min_samples, len(Xn) - 1)
    return float(np.median(np.sort(dist, axis=1)[:, kth])) if kth > 0 else 0.5


def fit_model(X: np.ndarray, model: str, *, k: int | None = None, eps: float | None = None,
              min_samples: int | None = None, linkage: str | None = None, seed: int = 0) -> np.ndarray:
    """Cluster labels (int64, -1 = noise) of the rows of ``X`` with one model.

    - ``kmeans``: k clusters (k-means++, KMEANS_INITS restarts, seeded).
    - ``agglomerative``: ``linkage`` ward (default; Euclidean, so give it
      :func:`prepare`d rows) or average / complete / single on cosine
      distances; k clusters, or, with ``eps`` instead of ``k``, cut where the
      merge distance passes ``eps``.
    - ``dbscan``: cosine distance, radius ``eps`` (default :func:`default_eps`),
      ``min_samples`` (default 5) neighbours make a core point.
    - ``hdbscan``: smallest cluster ``min_samples`` (default 5), on the
      L2-normalised rows.
    - ``gmm``: k Gaussian components with diagonal covariances (seeded).

    ``k`` larger than the number of rows is lowered to it. Raises ValueError
    with a user-facing message for an unknown model or a missing/bad parameter.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if model not in MODELS:
        raise ValueError(f"unknown clustering model {model!r} (choose from {', '.join(MODELS)})")
    if linkage is not None and linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r} (choose from {', '.join(LINKAGES)})")
    if k is not None and k < 1:
        raise ValueError("--k must be at least 1")
    if eps is not None and eps <= 0:
        raise ValueError("--eps must be above 0")
    if min_samples is not None and min_samples < 1:
        raise ValueError("--min-samples must be at least 1")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if k is not None:
        k = min(k, n)
    needs_k = model in ("kmeans", "gmm") or (model == "agglomerative" and eps is None)
    if needs_k and k is None:
        raise ValueError(f"{model} needs --k (the number of clusters)" +
                         (" or --eps (a distance threshold)" if model == "agglomerative" else ""))
    ms = DEFAULT_MIN_SAMPLES if min_samples is None else min_samples
    with single_thread():
        labels = _fit(X, model, k, eps, ms, linkage, seed)
    return relabel(labels)


def single_thread():
    """BLAS / OpenMP limited to one thread: on these small matrices
    scikit-learn's k-means and mixtures and the PCA's SVD run several times
    faster that way than with a thread per core fighting over a busy machine
    (measured on 2 shared cores: k-means on 500 x 64 10x, the SVD of
    500 x 1,280 40x)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _fit(X, model, k, eps, ms, linkage, seed) -> np.ndarray:
    n = len(X)
    if model == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit_predict(X)
    elif model == "agglomerative":
        tree = linkage_tree(X, linkage or "ward")
        labels = cut_tree(tree, k=k) if k is not None else cut_tree(tree, distance=eps)
    elif model == "dbscan":
        from sklearn.cluster import DBSCAN

        radius = default_eps(X, ms) if eps is None else eps
        labels = DBSCAN(eps=radius, min_samples=ms, metric="cosine").fit_predict(l2_normalize(X))
    elif model == "hdbscan":
        from sklearn.cluster import HDBSCAN

        if n <= 2:
            return np.zeros(n, dtype=np.int64)
        size = min(max(2, ms), n)  # HDBSCAN refuses a cluster size above the number of rows
        labels = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(l2_normalize(X))
    else:  # gmm
        from sklearn.mixture import GaussianMixture

        labels = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=1e-4,
                                 random_state=seed).fit(X).predict(X)
    return labels


def linkage_tree(X: np.ndarray, linkage: str = "ward") -> np.ndarray:
    """The full merge tree (scipy's linkage matrix) of the rows: ward on
    Euclidean distances, the other linkages on cosine distances. Built once,
    it gives the clustering at every k (:func:`cut_tree`)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import pdist

    X = np.asarray(X, dtype=np.float64)
    if linkage == "ward":
        return hierarchy.linkage(X, method="ward")
    dist = np.clip(pdist(l2_normalize(X), "cosine"), 0.0, 2.0)
    return hierarchy.linkage(dist, method=linkage)


def cut_tree(tree: np.ndarray, k: int | None = None, distance: float | None = None) -> np.ndarray:
    """Labels from a merge tree: k clusters (at most), or the clusters whose
    merges all lie below ``distance``."""
    from scipy.cluster import hierarchy

    if k is not None:
        labels = hierarchy.fcluster(tree, t=k, criterion="maxclust")
    else:
        labels = hierarchy.fcluster(tree, t=distance, criterion="distance")
    return relabel(labels - 1)


def representatives(X: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """For each cluster (label >= 0), the row index of the member nearest its
    centroid by cosine (ties: the lowest index). Noise (-1) has none."""
    Xn = l2_normalize(X)
    labels = np.asarray(labels)
    reps: dict[int, int] = {}
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        centroid = Xn[members].mean(axis=0)
        sims = Xn[members] @ centroid
        reps[int(label)] = int(members[int(np.argmax(sims))])
    return reps
