#!/usr/bin/env python3
"""Clustering by content on class-labelled sets: every vector model at the
true k, the automatic selection, and what batching costs (issue 11).

    python3 benchmarks/semantic.py                          # all sets and features
    python3 benchmarks/semantic.py --set tuxpaint_stamps --feature cnn
    python3 benchmarks/semantic.py --emb-dir DIR --json out.json

Sets: ../shared/bench/labelled_flat/{tuxpaint_stamps,fashion_mnist} (truth.json
beside the images) and scikit-learn's bundled digits (1,797 8 x 8 images, no
download). Features: pixels and hog through the backends
(``get_method(name).feature(path)``; for digits ``extract`` on the 8 x 8
array, pixels at size 8 = the raw digit), cnn from ``--emb-dir/<set>.npz``
(keys ``paths``, ``X``: the cnn backend's L2-normalised embeddings; skipped
when absent). Scores (clusterimg.evaluate, the same definitions as
../shared/bench/score.py; noise counts as singletons): ARI, NMI, pairwise F1.

Models at the true k on the prepared vectors (L2, PCA 64, L2): kmeans,
agglomerative ward, agglomerative average (cosine), gmm; hdbscan (min
cluster size 5) finds its own k. ``auto`` = clustering.selection.select.
``batches`` = cluster_in_batches with select, about three batches per set,
against auto on one batch. Times are wall seconds on this machine (shared:
compare them only within one run). Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterimg.clustering.selection import cluster_in_batches, select  # noqa: E402
from clusterimg.clustering.vector import fit_model, prepare  # noqa: E402
from clusterimg.evaluate import evaluate  # noqa: E402
from clusterimg.features import get_method  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ../shared/bench from the project's root (or from a worktree one level deeper)
BENCH = next((p / "shared" / "bench" / "labelled_flat" for p in (ROOT.parent, ROOT.parent.parent)
              if (p / "shared" / "bench").is_dir()), ROOT.parent / "shared" / "bench" / "labelled_flat")
SETS = ("tuxpaint_stamps", "fashion_mnist", "digits")
FEATURES = ("pixels", "hog", "cnn")
AT_K = (("kmeans", {}), ("agglomerative", {"linkage": "ward"}), ("agglomerative", {"linkage": "average"}),
        ("gmm", {}))
BATCHES = {"tuxpaint_stamps": 70, "fashion_mnist": 170, "digits": 600}


def load_set(name: str, bench: Path) -> tuple[list[str], dict[str, str], list]:
    """File names, name -> class, and what to extract from (paths or arrays)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        names = [f"digit_{i:04d}.png" for i in range(len(d.target))]
        images = list((d.images * (255 / 16)).astype(np.uint8))
        return names, {n: str(t) for n, t in zip(names, d.target)}, images
    truth_file = bench / name / "truth.json"
    truth = json.loads(truth_file.read_text())
    labels = {}
    for gi, group in enumerate(truth["groups"]):
        for member in group:
            labels[member] = truth["classes"][gi] if gi < len(truth.get("classes", [])) else f"g{gi}"
    names = sorted(labels)
    return names, labels, [bench / name / "images" / n for n in names]


def features(set_name: str, feature: str, names: list[str], sources: list, emb_dir: Path) -> np.ndarray | None:
    if feature == "cnn":
        f = emb_dir / f"{set_name}.npz"
        if not f.exists():
            return None
        z = np.load(f)
        row = {Path(str(p)).name: i for i, p in enumerate(z["paths"])}
        return np.asarray(z["X"], dtype=np.float32)[[row[n] for n in names]]
    if set_name == "digits":
        m = get_method("pixels", size=8, color="gray") if feature == "pixels" else get_method(feature)
        return m.vectors([m.extract(im) for im in sources])
    m = get_method(feature)
    return m.vectors([m.feature(p) for p in sources])


def scores(names: list[str], truth: dict[str, str], labels: np.ndarray) -> dict:
    clusters: dict[int, list[str]] = {}
    outliers = []
    for n, lab in zip(names, labels):
        (outliers.append(n) if lab < 0 else clusters.setdefault(int(lab), []).append(n))
    manifest = {"clusters": [{"id": c, "members": m} for c, m in sorted(clusters.items())], "outliers": outliers}
    m = evaluate(manifest, truth, match="name")
    return {"ari": round(m["ari"], 3), "nmi": round(m["nmi"], 3), "f1": round(m["f1"], 3),
            "k": len(clusters), "noise": len(outliers)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=SETS)
    ap.add_argument("--feature", action="append", choices=FEATURES)
    ap.add_argument("--bench", type=Path, default=BENCH)
    ap.add_argument("--emb-dir", type=Path, default=Path("/work/emb"))
    ap.add_argument("--no-batches", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    print("| set | feature | n | kmeans@k | ward@k | average@k | gmm@k | hdbscan | auto (chosen) | auto s | batches (size) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for set_name in args.set or SETS:
        names, truth, sources = load_set(set_name, args.bench)
        k = len(set(truth.values()))
        for feature in args.feature or FEATURES:
            X = features(set_name, feature, names, sources, args.emb_dir)
            if X is None:
                print(f"| {set_name} | {feature} | (no embeddings in {args.emb_dir}) |", flush=True)
                continue
            P = prepare(X)
            row = {"set": set_name, "feature": feature, "n": len(names), "true_k": k, "at_k": {}}
            for model, kw in AT_K:
                name = model if not kw else kw["linkage"]
                row["at_k"][name] = scores(names, truth, fit_model(P, model, k=k, **kw))
            row["hdbscan"] = scores(names, truth, fit_model(P, "hdbscan"))
            t = time.perf_counter()
            sel = select(X, seed=0)
            row["auto_seconds"] = round(time.perf_counter() - t, 1)
            row["auto"] = {**scores(names, truth, sel.labels), "chosen": sel.chosen}
            if not args.no_batches:
                size = BATCHES[set_name]
                labels = cluster_in_batches(X, size, lambda B: select(B, seed=0))
                row["batches"] = {**scores(names, truth, labels), "batch_size": size}
            results.append(row)
            ch = sel.chosen
            chosen = ch["model"] + (f"-{ch['params']['linkage']}" if "linkage" in ch["params"] else "")
            cell = lambda s: f"{s['ari']:.2f} / {s['nmi']:.2f} / {s['f1']:.2f}"
            batch = (f"{cell(row['batches'])} k={row['batches']['k']} ({row['batches']['batch_size']})"
                     if "batches" in row else "")
            print(f"| {set_name} | {feature} | {len(names)} | " + " | ".join(cell(row["at_k"][m]) for m in
                  ("kmeans", "ward", "average", "gmm")) + f" | {cell(row['hdbscan'])} k={row['hdbscan']['k']} | "
                  f"{cell(row['auto'])} ({chosen} k={ch['k']}) | {row['auto_seconds']} | {batch} |", flush=True)
    print("cells: ARI / NMI / pairwise F1")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
