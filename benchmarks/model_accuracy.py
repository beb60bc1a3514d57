"""Accuracy of a fitted, labelled cluster model on images it has not seen.

On a class-labelled set (default ../shared/bench/labelled_flat/tuxpaint_stamps,
classes from names.json: file -> class/file): a seeded 70 % split per class,
fit on the 70 % (features + a clustering model), labels taken from the class
folders (``ClusterModel.labels_from_folders`` on ../shared/bench/labelled/<set>,
files matched by content: what `clusterimg label --from-folders` does), then
the other 30 % assigned. An assignment is right when its labels are exactly
[the true class]; images assigned to no cluster (-1) count as wrong.

The clustering model: through ``clusterimg.cluster(..., cluster=MODEL)`` when
that model is wired into the API; otherwise (vector models before they are
wired) the features from the API and ``clustering.vector.fit_model`` on them,
turned into a Result by hand.

    python3 benchmarks/model_accuracy.py --method cnn --cluster kmeans --k 7
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clusterimg  # noqa: E402
from clusterimg.model import from_result  # noqa: E402
from clusterimg.result import Cluster, Result  # noqa: E402

BENCH = ROOT.parent.parent / "shared" / "bench"


def split(names: dict[str, str], seed: int, share: float) -> tuple[list[str], list[str]]:
    by_class: dict[str, list[str]] = {}
    for name, rel in sorted(names.items()):
        by_class.setdefault(rel.split("/")[0], []).append(name)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in sorted(by_class):
        files = by_class[cls]
        order = rng.permutation(len(files))
        cut = int(round(share * len(files)))
        train += [files[k] for k in order[:cut]]
        test += [files[k] for k in order[cut:]]
    return sorted(train), sorted(test)


def fit_vector_by_hand(files, method, model_name, cache, **opts):
    from clusterimg.clustering import vector

    result = clusterimg.cluster(files, method, cluster="graph", keep_features=True, cache=cache)
    paths = sorted(result.features)
    backend = clusterimg.features.get_method(method)
    x = backend.vectors([result.features[p] for p in paths])
    pca = opts.pop("pca", vector.DEFAULT_PCA)
    if model_name == "agglomerative" and opts.get("linkage", "ward") != "ward" or model_name == "dbscan":
        labels = vector.fit_model(x, model_name, **opts)
    else:
        labels = vector.fit_model(vector.prepare(x, pca), model_name, **opts)
    if model_name == "dbscan" and opts.get("eps") is None:
        opts["eps"] = vector.default_eps(x, opts.get("min_samples") or vector.DEFAULT_MIN_SAMPLES)
    reps = vector.representatives(x, labels)
    clusters = [Cluster([paths[i] for i in np.flatnonzero(labels == c)], paths[reps[c]], {})
                for c in sorted(set(labels.tolist()) - {-1})]
    outliers = [paths[i] for i in np.flatnonzero(labels == -1)]
    return Result(clusters, outliers, result.skipped, result.images, method=method, params=result.params,
                  clustering=dict(model=model_name, **{k: v for k, v in opts.items() if v is not None}),
                  roots=result.roots, features=result.features)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="tuxpaint_stamps")
    ap.add_argument("--method", default="cnn")
    ap.add_argument("--cluster", default="kmeans")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--eps", type=float, default=None)
    ap.add_argument("--min-samples", type=int, default=None)
    ap.add_argument("--linkage", default=None)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-share", type=float, default=0.7)
    ap.add_argument("--radius-quantile", type=float, default=0.95)
    ap.add_argument("--radius-slack", type=float, default=1.0)
    ap.add_argument("--foreign", default="fashion_mnist",
                    help="another labelled_flat set: its first 100 images should get no cluster (-1)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: a new temporary one)")
    args = ap.parse_args()

    flat = BENCH / "labelled_flat" / args.set
    names = json.loads((flat / "names.json").read_text())
    train, test = split(names, args.seed, args.train_share)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="model_accuracy_cache_"))
    files = [flat / "images" / n for n in train]
    opts = {k: v for k, v in dict(k=args.k, eps=args.eps, min_samples=args.min_samples, linkage=args.linkage).items()
            if v is not None}
    t = time.perf_counter()
    if args.cluster in clusterimg.clustering_models():
        result = clusterimg.cluster(files, args.method, args.threshold, cluster=args.cluster, keep_features=True,
                                    cache=cache, **opts)
        how = "clusterimg.cluster"
    else:
        result = fit_vector_by_hand(files, args.method, args.cluster, cache, **opts)
        how = "API features + clustering.vector.fit_model"
    model = from_result(result, radius_quantile=args.radius_quantile, radius_slack=args.radius_slack)
    fit_s = time.perf_counter() - t
    counts = model.labels_from_folders(BENCH / "labelled" / args.set)
    t = time.perf_counter()
    answers = model.assign([flat / "images" / n for n in test])
    assign_s = time.perf_counter() - t
    truth = [names[n].split("/")[0] for n in test]
    right = sum(a.labels == [c] for a, c in zip(answers, truth))
    unassigned = sum(a.cluster == -1 for a in answers)
    assigned_right = sum(a.labels == [c] for a, c in zip(answers, truth) if a.cluster != -1)
    print(f"set {args.set}: {len(train)} train / {len(test)} test images (seed {args.seed}, "
          f"{args.train_share:.0%} per class); method {args.method}, clustering {model.clustering} via {how}; "
          "rule " + json.dumps({k: v for k, v in model.rule.items() if k != "core_mask"}))
    print(f"fit: {len(model.clusters)} clusters, {len(model.outliers)} outliers in {fit_s:.1f} s; labels from "
          f"folders: {counts['matched']} of {counts['files']} files matched, {counts['clusters']} clusters labelled")
    print(f"assign: {len(test)} images in {assign_s:.1f} s; label accuracy {right}/{len(test)} = {right / len(test):.3f}; "
          f"no cluster (-1): {unassigned}; accuracy among assigned: {assigned_right}/{len(test) - unassigned}")
    if args.foreign:
        others = sorted((BENCH / "labelled_flat" / args.foreign / "images").iterdir())[:100]
        refused = sum(a.cluster == -1 for a in model.assign(others))
        print(f"foreign images ({args.foreign}, not in any class of the model): {refused}/{len(others)} "
              "got no cluster (-1)")


if __name__ == "__main__":
    main()
