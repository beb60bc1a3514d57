"""Automatic choice of a clustering model and of the number of clusters.

The rule ("silhouette gap"): a clustering is only worth what it beats a
structureless cloud of the same shape by.

1. The vectors are :func:`~clusterimg.clustering.vector.prepare`\\ d (L2,
   PCA, L2). A *reference* data set is drawn once (seeded): a Gaussian with
   the same mean and per-component spread as the prepared vectors (PCA
   components are uncorrelated, so this is the same covariance), normalised
   the same way. It has the data's shape but no clusters.
2. k-means runs at every k in [k_min, k_max] on the data and on the
   reference. gap(k) = silhouette(data, k) - silhouette(reference, k), both
   with cosine distances. A reference cut along its long axis scores well at
   k = 2 or 3 too, so the split every metric likes on elongated data (light
   vs dark clothing) earns nothing; the silhouette of real classes keeps its
   lead as k grows. The gap is smoothed over k-2 .. k+2 with triangular
   weights 1, 2, 3, 2, 1 (one silhouette is noisy; the weights keep a sharp
   peak from being pulled towards its neighbours), and k* is where the
   smoothed gap peaks (ties: the smaller k).
3. At k*, the k-models (k-means, ward, average linkage on cosine, Gaussian
   mixture) are compared by silhouette; the highest wins.
4. HDBSCAN and DBSCAN find their own k; their score is their silhouette with
   noise points counted as 0, minus the reference's at their k, and one wins
   only if that beats the gap of step 3's winner.

Measured in benchmarks/semantic.py: every model at the true k on three
labelled sets (tuxpaint stamps, fashion-mnist, sklearn digits) with CNN, HOG
and pixel features. Silhouette alone picks k = 2-3 on the grey sets, and
Calinski-Harabasz and Davies-Bouldin favour few clusters too: they are
reported in the table for reference but take no part in the choice.

Cost: one k-means per k on the data and on the reference (single-threaded,
see vector.single_thread), two merge trees cut at every k, one mixture at k*,
the density models once per parameter; silhouettes on at most METRIC_SAMPLE
vectors (a fixed seeded subsample). A few seconds for 2,000 vectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from clusterimg.clustering.vector import (
    DEFAULT_PCA, MODELS, fit_model, l2_normalize, linkage_tree, cut_tree, prepare,
    relabel, representatives, single_thread)

METRIC_SAMPLE = 1000  # silhouettes etc. on at most this many vectors (a fixed seeded sample)
K_CAP = 30  # largest k tried by default
HDBSCAN_SIZES = (5, 15)  # min cluster sizes tried
DBSCAN_QUANTILES = (0.25, 0.5)  # of the 5th-neighbour cosine distance: the radii tried
SMOOTH = 2  # the gap is averaged over k-SMOOTH .. k+SMOOTH, with triangular weights (1, 2, 3, 2, 1)
REFERENCE_DRAWS = 1  # reference data sets averaged
SWEEP_INITS = 3  # k-means++ restarts per k on the data (the reference needs 1: it has no clusters to miss)


@dataclass
class Selection:
    """What :func:`select` chose and why."""

    labels: np.ndarray  # per row, -1 = noise; renumbered (0 = largest)
    chosen: dict  # {"model", "params", "k"} of the winner
    table: list[dict] = field(default_factory=list)  # every candidate with its metrics

    def lines(self) -> list[str]:
        """The candidates as a text table (for --verbose), the chosen one starred."""
        out = [f"{'model':34s} {'k':>3s} {'silhouette':>10s} {'reference':>9s} {'gap':>7s} {'smoothed':>8s} "
               f"{'CH':>9s} {'DB':>6s} {'noise':>5s}"]
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"
        for row in self.table:
            params = ",".join(f"{k}={v}" for k, v in row["params"].items() if k != "k")
            name = row["model"] + (f"({params})" if params else "")
            out.append(f"{name:34s} {row['k']:3d} {row['silhouette']:10.3f} {fmt(row['reference_silhouette'], '9.3f'):>9s} "
                       f"{fmt(row['gap'], '7.3f'):>7s} {fmt(row.get('smoothed_gap'), '8.3f'):>8s} "
                       f"{fmt(row['calinski_harabasz'], '9.1f'):>9s} {fmt(row['davies_bouldin'], '6.2f'):>6s} "
                       f"{row['noise']:5.2f}" + ("  <- chosen" if row["chosen"] else ""))
        return out

    def to_json(self) -> dict:
        """The manifest's "model_selection" entry (plain JSON types)."""
        return {"rule": "silhouette gap over a Gaussian reference (clustering/selection.py)",
                "chosen": self.chosen, "candidates": self.table}


def default_k_max(n: int) -> int:
    return int(max(2, min(K_CAP, max(10, n // 10), n - 1)))


def _onehot(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found, inverse = np.unique(labels, return_inverse=True)
    M = np.zeros((len(labels), len(found)))
    M[np.arange(len(labels)), inverse] = 1.0
    return M, inverse


def silhouette(D: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) of a precomputed distance matrix,
    noise rows (label -1) left out of every mean and counting 0; 0 when
    fewer than 2 clusters. Members of a cluster of one score 0 (as in
    scikit-learn, whose silhouette_score it equals without noise)."""
    labels = np.asarray(labels)
    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return 0.0
    Dk = D if keep.all() else D[np.ix_(keep, keep)]
    M, inv = _onehot(labels[keep])
    counts = M.sum(axis=0)
    sums = Dk @ M  # distance of each row to each cluster, summed
    rows = np.arange(len(inv))
    own = counts[inv]
    a = np.where(own > 1, sums[rows, inv] / np.maximum(own - 1, 1), 0.0)
    mean_other = sums / counts
    mean_other[rows, inv] = np.inf
    b = mean_other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where((own > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(s.sum() / len(labels))


def calinski_harabasz(P: np.ndarray, labels: np.ndarray) -> float | None:
    """Between- over within-cluster dispersion, each per degree of freedom."""
    M, inv = _onehot(labels)
    k, n = M.shape[1], len(P)
    if not 2 <= k < n:
        return None
    counts = M.sum(axis=0)
    centroids = (M.T @ P) / counts[:, None]
    between = float(np.sum(counts * np.sum((centroids - P.mean(axis=0)) ** 2, axis=1)))
    within = float(np.sum((P - centroids[inv]) ** 2))
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def davies_bouldin(P: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean over clusters of the worst (spread_i + spread_j) / centroid distance."""
    M, inv = _onehot(labels)
    k = M.shape[1]
    if not 2 <= k < len(P):
        return None
    counts = M.sum(axis=0)
    centroids = (M.T @ P) / counts[:, None]
    spread = (M.T @ np.linalg.norm(P - centroids[inv], axis=1)) / counts
    sep = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (spread[:, None] + spread[None, :]) / sep
    ratio[~np.isfinite(ratio)] = 0.0
    np.fill_diagonal(ratio, 0.0)
    return float(ratio.max(axis=1).mean())


def _metrics(P: np.ndarray, D: np.ndarray, sample: np.ndarray, labels: np.ndarray) -> dict:
    """Silhouette (cosine, noise = 0), Calinski-Harabasz, Davies-Bouldin (on
    the non-noise rows) of ``labels`` over the metric sample."""
    lab = labels[sample]
    keep = lab >= 0
    k = len(np.unique(labels[labels >= 0]))
    return {"k": k, "silhouette": silhouette(D, lab), "noise": float(np.mean(labels < 0)),
            "calinski_harabasz": calinski_harabasz(P[sample][keep], lab[keep]),
            "davies_bouldin": davies_bouldin(P[sample][keep], lab[keep])}


def _distances(P: np.ndarray) -> np.ndarray:
    D = np.clip(1.0 - P @ P.T, 0.0, 2.0)
    np.fill_diagonal(D, 0.0)
    return D


def select(X: np.ndarray, *, models: Iterable[str] | None = None, k_min: int = 2, k_max: int | None = None,
           pca: int | None = DEFAULT_PCA, seed: int = 0) -> Selection:
    """Cluster the rows of ``X`` with the model and k the silhouette-gap rule
    picks (see the module's docstring). ``models``: a subset of
    vector.MODELS (default all); ``agglomerative`` stands for ward and
    average linkage. Deterministic for a given ``seed``."""
    models = tuple(MODELS if models is None else models)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown clustering model {', '.join(unknown) or '(none)'} (choose from {', '.join(MODELS)})")
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n < 4:  # too few to compare clusterings: one cluster (or none)
        labels = np.zeros(n, dtype=np.int64)
        return Selection(labels, {"model": "none", "params": {}, "k": int(n > 0),
                                  "reason": "fewer than 4 vectors: one cluster"}, [])
    k_min = max(2, k_min)
    k_max = min(default_k_max(n) if k_max is None else k_max, n - 2)
    k_max = max(k_max, k_min)
    k_min = min(k_min, k_max)
    ks = list(range(k_min, k_max + 1))

    with single_thread():
        return _select(X, models, ks, k_min, k_max, pca, seed)


def _select(X, models, ks, k_min, k_max, pca, seed) -> Selection:
    n = len(X)
    P = prepare(X, pca, seed)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, METRIC_SAMPLE, replace=False)) if n > METRIC_SAMPLE else np.arange(n)
    D = _distances(P[sample])
    # The structureless reference: same mean and per-component spread, no clusters.
    refs = []
    for _ in range(REFERENCE_DRAWS):
        Z = l2_normalize(P.mean(axis=0) + rng.standard_normal(P.shape) * P.std(axis=0))
        refs.append((Z, _distances(Z[sample])))

    k_models = [m for m in ("kmeans", "agglomerative", "gmm") if m in models]
    sweep_model = "kmeans" if "kmeans" in models else ("agglomerative" if "agglomerative" in models else None)
    table: list[dict] = []
    results: list[tuple[dict, np.ndarray]] = []

    def add(model: str, params: dict, labels: np.ndarray, ref: float | None) -> dict:
        row = {"model": model, "params": params, **_metrics(P, D, sample, labels)}
        row["reference_silhouette"] = ref
        row["gap"] = None if ref is None else row["silhouette"] - ref
        row["chosen"] = False
        table.append(row)
        results.append((row, labels))
        return row

    with single_thread():
        trees = {}
        if "agglomerative" in models:
            trees = {"ward": linkage_tree(P, "ward"), "average": linkage_tree(P, "average")}
        ref_trees = {}
        # 1-2. The sweep over k, on the data and on the reference.
        ref_sil: dict[int, float] = {}
        sweep_rows: dict[int, dict] = {}
        for k in ks:
            ref_sil[k] = 0.0
            for r, (Z, DZ) in enumerate(refs):
                if sweep_model == "kmeans":
                    zl = relabel(_kmeans(Z, k, seed, inits=1))
                elif sweep_model == "agglomerative":
                    ref_trees.setdefault(r, linkage_tree(Z, "ward"))
                    zl = cut_tree(ref_trees[r], k=k)
                else:
                    continue
                ref_sil[k] += silhouette(DZ, zl[sample]) / len(refs)
            if "kmeans" in models:
                row = add("kmeans", {"k": k}, relabel(_kmeans(P, k, seed)), ref_sil[k])
                if sweep_model == "kmeans":
                    sweep_rows[k] = row
            for link, tree in trees.items():
                row = add("agglomerative", {"k": k, "linkage": link}, cut_tree(tree, k=k), ref_sil[k])
                if sweep_model == "agglomerative" and link == "ward":
                    sweep_rows[k] = row

        def smoothed(k: int) -> float:
            near = [j for j in range(k - SMOOTH, k + SMOOTH + 1) if j in sweep_rows]
            weights = [SMOOTH + 1 - abs(j - k) for j in near]
            return float(np.average([sweep_rows[j]["gap"] for j in near], weights=weights))

        best_k, best_gap = None, -np.inf
        for k in ks:
            if sweep_rows:
                g = smoothed(k)
                sweep_rows[k]["smoothed_gap"] = g
                if g > best_gap + 1e-12:
                    best_k, best_gap = k, g
        # 3. At k*, the k-models by silhouette.
        if "gmm" in models and best_k is not None:
            add("gmm", {"k": best_k}, fit_model(P, "gmm", k=best_k, seed=seed), ref_sil[best_k])
        elif "gmm" in models and not sweep_rows:  # gmm alone: sweep it like k-means
            for k in ks:
                sweep_rows[k] = add("gmm", {"k": k}, fit_model(P, "gmm", k=k, seed=seed), None)
                sweep_rows[k]["gap"] = sweep_rows[k]["silhouette"]
            best_k = max(ks, key=lambda k: (sweep_rows[k]["gap"], -k))
            best_gap = sweep_rows[best_k]["gap"]
        winner = None
        if best_k is not None:
            at_k = [(row, lab) for row, lab in results if row["params"].get("k") == best_k and row["model"] in k_models]
            winner = max(at_k, key=lambda rl: rl[0]["silhouette"])
        # 4. The density models compete on their noise-penalised gap.
        for model, grid in (("hdbscan", HDBSCAN_SIZES), ("dbscan", DBSCAN_QUANTILES)):
            if model not in models:
                continue
            for value in grid:
                if model == "hdbscan" and value > n // 2:
                    continue
                if model == "hdbscan":
                    params = {"min_samples": int(value)}
                    labels = fit_model(P, "hdbscan", min_samples=int(value))
                else:
                    params = {"eps": round(_radius(P, value), 4), "min_samples": 5}
                    labels = fit_model(P, "dbscan", eps=params["eps"], min_samples=5)
                kf = len(np.unique(labels[labels >= 0]))
                ref = ref_sil.get(min(max(kf, k_min), k_max)) if sweep_rows else 0.0
                row = add(model, params, labels, ref)
                # Raw gap against the k-model winner's raw gap (not the smoothed one,
                # which is lower at a peak): a density model must do strictly better.
                if kf >= 2 and (winner is None or row["gap"] > winner[0]["gap"] + 1e-9):
                    winner = (row, labels)

    if winner is None:
        labels = np.zeros(n, dtype=np.int64)
        return Selection(labels, {"model": "none", "params": {}, "k": 1, "reason": "no candidate"}, table)
    winner[0]["chosen"] = True
    row = winner[0]
    chosen = {"model": row["model"], "params": row["params"], "k": row["k"], "pca": pca, "seed": seed,
              "silhouette": row["silhouette"], "gap": row["gap"]}
    return Selection(winner[1], chosen, table)


def _kmeans(P: np.ndarray, k: int, seed: int, inits: int = SWEEP_INITS) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=inits, random_state=seed).fit_predict(P)


def _radius(P: np.ndarray, quantile: float) -> float:
    """A DBSCAN radius: the given quantile of the 5th-neighbour cosine distance."""
    Pn = l2_normalize(P)
    kth = min(5, len(Pn) - 1)
    if len(Pn) > METRIC_SAMPLE:
        Pn = Pn[np.linspace(0, len(Pn) - 1, METRIC_SAMPLE).astype(int)]
    dist = np.sort(np.clip(1.0 - Pn @ Pn.T, 0.0, 2.0), axis=1)[:, kth]
    return max(float(np.quantile(dist, quantile)), 1e-6)


def cluster_in_batches(X: np.ndarray, batch_size: int,
                       select_fn: Callable[[np.ndarray], "Selection | np.ndarray"]) -> np.ndarray:
    """Labels of the rows of ``X`` clustered batch by batch, then merged.

    The rows are cut into consecutive batches of ``batch_size``; each batch is
    clustered by ``select_fn`` (e.g. ``lambda B: select(B, seed=0)``). Each
    batch cluster is then stood for by its representative (the member nearest
    its centroid by cosine), each noise row by itself, and these are clustered
    by the same ``select_fn``: batch clusters whose representatives land
    together are merged. A representative left as noise keeps its batch
    cluster on its own. Labels renumbered (0 = largest, -1 = noise).
    """
    X = np.asarray(X)
    n = len(X)
    if batch_size <= 0 or n <= batch_size:
        return relabel(_labels_of(select_fn(X)))
    units: list[np.ndarray] = []  # row indices of each batch cluster / noise row
    reps: list[int] = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        # A batch too small to cluster (a short last batch) sends every row to the merge.
        labels = _labels_of(select_fn(X[idx])) if len(idx) >= 4 else np.full(len(idx), -1)
        for label, rep in sorted(representatives(X[idx], labels).items()):
            units.append(idx[labels == label])
            reps.append(int(idx[rep]))
        for i in idx[labels < 0]:
            units.append(np.array([i]))
            reps.append(int(i))
    merged = _labels_of(select_fn(X[np.array(reps)]))
    out = np.full(n, -1, dtype=np.int64)
    next_label = int(merged.max(initial=-1)) + 1
    for unit, label in zip(units, merged):
        if label >= 0:
            out[unit] = label
        elif len(unit) > 1:  # a batch cluster the merge left alone stays a cluster
            out[unit] = next_label
            next_label += 1
    return relabel(out)


def _labels_of(result) -> np.ndarray:
    return np.asarray(result.labels if hasattr(result, "labels") else result, dtype=np.int64)
