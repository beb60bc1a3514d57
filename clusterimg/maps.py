"""Pictures of a vector clustering: a 2-D map of the images and the model
selection's curves (``--plot``: map.png and selection.png).

matplotlib is imported only here and only when a picture is asked for (it is
an optional extra: ``pip install clusterimg[plot]``); without it the run
stops with a one-line error before any work. The figures are drawn with
matplotlib's Agg canvas directly (no pyplot, no display needed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from clusterimg.errors import ClusterimgError

MAX_THUMBS = 12  # thumbnails drawn at cluster centres (the largest clusters)
THUMB_SIDE = 56


def require_matplotlib():
    """The matplotlib Figure class, or a one-line ClusterimgError (exit 2)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ClusterimgError("--plot needs matplotlib: pip install 'clusterimg[plot]'", exit_code=2)
    return Figure


def embed_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates: L2-normalised rows, PCA to 50, then t-SNE (seeded;
    perplexity lowered for small sets); PCA alone below 10 rows."""
    from clusterimg.clustering.vector import l2_normalize, reduce

    X = l2_normalize(X)
    n = len(X)
    if n < 10:
        Y = reduce(X, 2, seed) if X.shape[1] > 2 else X
        Y = np.zeros((n, 2)) if Y.size == 0 else Y
        return np.pad(Y, ((0, 0), (0, max(0, 2 - Y.shape[1]))))[:, :2]
    from sklearn.manifold import TSNE

    from clusterimg.clustering.vector import single_thread

    Y = reduce(X, 50, seed)
    with single_thread():
        return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed,
                    n_jobs=1).fit_transform(Y)


def _colours(k: int):
    from matplotlib import colormaps

    cmap = colormaps["tab20" if k > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(k)]


def plot_map(path: str | Path, X: np.ndarray, labels: np.ndarray, thumbs: Sequence | None = None,
             seed: int = 0, title: str | None = None) -> Path:
    """Write a PNG map: one point per image (t-SNE of the PCA-reduced
    vectors), coloured by cluster, noise as grey crosses, and for the
    largest clusters the thumbnail of the member nearest the centroid
    (``thumbs``: an image path or an array per row) at the cluster's centre."""
    Figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from clusterimg.clustering.vector import representatives

    labels = np.asarray(labels)
    Y = embed_2d(X, seed)
    clusters = [c for c in np.unique(labels) if c >= 0]
    colours = _colours(max(1, len(clusters)))
    fig = Figure(figsize=(10, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    noise = labels < 0
    if noise.any():
        ax.scatter(Y[noise, 0], Y[noise, 1], s=14, c="0.6", marker="x", linewidths=0.8, label="outliers")
    for i, c in enumerate(clusters):
        m = labels == c
        ax.scatter(Y[m, 0], Y[m, 1], s=16, color=colours[i], alpha=0.85, edgecolors="none")
    if thumbs is not None and clusters:
        reps = representatives(X, labels)
        by_size = sorted(clusters, key=lambda c: (-int(np.sum(labels == c)), c))[:MAX_THUMBS]
        for c in by_size:
            image = _thumb(thumbs[reps[c]])
            if image is None:
                continue
            centre = np.median(Y[labels == c], axis=0)
            box = AnnotationBbox(OffsetImage(image, zoom=1.0, cmap="gray" if image.ndim == 2 else None),
                                 centre, frameon=True, pad=0.15,
                                 bboxprops={"edgecolor": colours[clusters.index(c)], "linewidth": 2})
            ax.add_artist(box)
            ax.annotate(str(c + 1), centre, xytext=(0, THUMB_SIDE // 2 + 6), textcoords="offset points",
                        ha="center", fontsize=8, color="black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{len(labels)} images, {len(clusters)} clusters"
                 + (f", {int(noise.sum())} outliers" if noise.any() else "") + " (t-SNE of PCA-50)")
    if noise.any():
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _thumb(source) -> np.ndarray | None:
    if source is None:
        return None
    if isinstance(source, np.ndarray):
        import cv2

        h, w = source.shape[:2]
        scale = THUMB_SIDE / max(h, w)
        return cv2.resize(source, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    from clusterimg.errors import ImageReadError
    from clusterimg.images import load_image

    try:
        return load_image(source, max_side=THUMB_SIDE)
    except ImageReadError:
        return None


def plot_selection(path: str | Path, table: Sequence[dict], chosen: dict) -> Path:
    """Write a PNG of the model selection: silhouette of each k-model against
    k with the reference's silhouette and the (smoothed) gap that picked k;
    Calinski-Harabasz and Davies-Bouldin against k; density models as
    single points at the k they found; the chosen candidate ringed."""
    Figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(13, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    series: dict[str, list[dict]] = {}
    for row in table:
        name = row["model"] + (f" ({row['params']['linkage']})" if "linkage" in row["params"] else "")
        series.setdefault(name, []).append(row)
    colours = dict(zip(series, _colours(max(1, len(series)))))
    for ax, key, label in zip(axes, ("silhouette", "calinski_harabasz", "davies_bouldin"),
                              ("silhouette (cosine; higher is better)", "Calinski-Harabasz (higher)",
                               "Davies-Bouldin (lower)")):
        for name, rows in series.items():
            pts = sorted((r["k"], r[key]) for r in rows if r.get(key) is not None)
            if not pts:
                continue
            ks, vs = zip(*pts)
            density = rows[0]["model"] in ("hdbscan", "dbscan")
            ax.plot(ks, vs, "o" if density or len(pts) == 1 else ".-", color=colours[name], label=name,
                    markersize=5, linewidth=1.2)
        if key == "silhouette":
            ref = sorted({(r["k"], r["reference_silhouette"]) for r in table
                          if r.get("reference_silhouette") is not None and r["model"] not in ("hdbscan", "dbscan")})
            if ref:
                ax.plot(*zip(*ref), "--", color="0.4", linewidth=1, label="reference (no clusters)")
            gap = sorted((r["k"], r["smoothed_gap"]) for r in table if r.get("smoothed_gap") is not None)
            if gap:
                ax.plot(*zip(*gap), ":", color="black", linewidth=1.5, label="smoothed gap (picks k)")
        win = next((r for r in table if r.get("chosen")), None)
        if win is not None and win.get(key) is not None:
            ax.plot([win["k"]], [win[key]], "o", markersize=14, markerfacecolor="none", markeredgecolor="red",
                    markeredgewidth=2, label="chosen")
        ax.set_xlabel("k (clusters)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    params = ", ".join(f"{k}={v}" for k, v in chosen.get("params", {}).items())
    fig.suptitle(f"model selection: chose {chosen.get('model')} ({params})", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
