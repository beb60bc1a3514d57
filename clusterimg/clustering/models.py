"""The vector clustering models behind ``--cluster``: k-means, agglomerative,
DBSCAN, HDBSCAN, a Gaussian mixture, and ``auto`` (every model over a range
of k / eps, chosen by the rule in :mod:`clusterimg.clustering.selection`).

They cluster backends with one vector per image (cnn, pixels, hog,
autoencoder). The rows are L2-normalised and PCA-reduced (``--pca``) before
clustering; with ``--batch-size`` each batch is clustered on its own, then the
batch clusters' representatives (the member nearest the centroid) are
clustered with the same model and the batches' clusters merged. Noise
(DBSCAN, HDBSCAN) becomes outliers. A member's score is its cosine similarity
to the representative, clipped to [0, 1].
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from clusterimg.clustering.base import Clusterer, Group, Groups
from clusterimg.clustering.selection import Selection, cluster_in_batches, select
from clusterimg.clustering.vector import (DEFAULT_MIN_SAMPLES, DEFAULT_PCA, LINKAGES, default_eps, fit_model,
                                          l2_normalize, prepare, representatives)
from clusterimg.options import Option

SEED = 0  # every model is seeded: the same input always gives the same clusters

VECTOR_OPTIONS = (
    Option("k", int, None, "vector models: number of clusters (kmeans, agglomerative, gmm); omitted: chosen "
           "automatically"),
    Option("eps", float, None, "vector models: dbscan's radius, or agglomerative's distance cut (cosine); "
           "omitted: chosen automatically"),
    Option("min_samples", int, None, "vector models: dbscan's neighbours of a core point, hdbscan's smallest "
           "cluster [5]"),
    Option("linkage", str, None, "vector models: agglomerative linkage: ward (on PCA-reduced vectors), "
           "average, complete or single (cosine) [ward]", choices=LINKAGES),
    Option("pca", int, DEFAULT_PCA, "vector models: dimensions kept by PCA before clustering (0: none)"),
)


class VectorClusterer(Clusterer):
    """One scikit-learn model (``model``) with its parameters; parameters it
    needs and was not given (k, eps) are chosen by the selection rule over
    that model alone."""

    needs = "vector"
    options = VECTOR_OPTIONS
    model: ClassVar[str]

    def check_params(self) -> None:
        for name in ("k", "min_samples"):
            if self.params[name] is not None and self.params[name] < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.params["eps"] is not None and not self.params["eps"] > 0:
            raise ValueError("--eps must be above 0")
        if self.params["pca"] is not None and self.params["pca"] < 0:
            raise ValueError("--pca must be 0 (none) or more")

    def _pca(self) -> int | None:
        return self.params["pca"] or None

    def labels(self, X: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        p = self.params
        fixed = p["k"] is not None or (self.model in ("dbscan", "hdbscan")) or \
            (self.model == "agglomerative" and p["eps"] is not None)
        if fixed:
            P = prepare(X, self._pca(), SEED)
            eps = p["eps"]
            if self.model == "dbscan" and eps is None:  # chosen here, so that it is recorded
                eps = default_eps(P, p["min_samples"] or DEFAULT_MIN_SAMPLES)
                self.used["eps"] = round(float(eps), 6)
            labels = fit_model(P, self.model, k=p["k"], eps=eps, min_samples=p["min_samples"], linkage=p["linkage"],
                               seed=SEED)
            return labels, None
        selection = select(X, models=[self.model], pca=self._pca(), seed=SEED)
        return selection.labels, selection

    def cluster(self, method, features, scorer, *, threshold, batch_size, exhaustive, bars) -> Groups:
        X = method.vectors(features)
        if len(X) < 2:
            return Groups([], list(range(len(X))), {})
        self.used: dict = {}  # parameters chosen while clustering (dbscan's eps), for the manifest
        last: list[Selection] = []

        def one_batch(B: np.ndarray) -> np.ndarray:
            labels, selection = self.labels(B)
            if selection is not None:
                last.append(selection)
            return labels

        with bars("clustering")(1) as shown:
            labels = cluster_in_batches(X, batch_size or 0, one_batch)
            shown.update(1)
        info = dict(self.used)
        if last:
            info["model_selection"] = last[-1].to_json()
            info["chosen"] = last[-1].chosen
        return groups_of(X, labels, info)


def groups_of(X: np.ndarray, labels: np.ndarray, info: dict) -> Groups:
    """Groups with representatives (nearest the centroid) and cosine scores."""
    Xn = l2_normalize(np.asarray(X, dtype=np.float64))
    reps = representatives(X, labels)
    groups, outliers = [], [int(k) for k in np.flatnonzero(labels < 0)]
    for label, rep in sorted(reps.items()):
        members = [int(k) for k in np.flatnonzero(labels == label)]
        if len(members) == 1:
            outliers.append(members[0])
            continue
        scores = np.clip(Xn[members] @ Xn[rep], 0.0, 1.0)
        groups.append(Group(members, rep, [1.0 if m == rep else round(float(s), 4) for m, s in zip(members, scores)]))
    return Groups(groups, sorted(outliers), info)


class KMeans(VectorClusterer):
    name = model = "kmeans"
    summary = "k-means (k-means++, seeded) on PCA-reduced, normalised vectors"


class Agglomerative(VectorClusterer):
    name = model = "agglomerative"
    summary = "agglomerative: ward on PCA-reduced vectors, or average/complete/single linkage on cosine"


class DBSCAN(VectorClusterer):
    name = model = "dbscan"
    summary = "DBSCAN on cosine distance; sparse images become outliers"


class HDBSCAN(VectorClusterer):
    name = model = "hdbscan"
    summary = "HDBSCAN: density clusters of varying size; sparse images become outliers"


class GMM(VectorClusterer):
    name = model = "gmm"
    summary = "Gaussian mixture (diagonal covariances, seeded)"


class Auto(VectorClusterer):
    """Every model over a range of k / eps; the selection rule picks one."""

    name = "auto"
    summary = "tries every vector model over a range of k / eps and picks one (silhouette gap rule)"

    def labels(self, X: np.ndarray) -> tuple[np.ndarray, Selection | None]:
        if self.params["k"] is not None:  # k given: the models that take k, at that k
            selection = select(X, models=["kmeans", "agglomerative", "gmm"], k_min=self.params["k"],
                               k_max=self.params["k"], pca=self._pca(), seed=SEED)
        else:
            selection = select(X, pca=self._pca(), seed=SEED)
        return selection.labels, selection
