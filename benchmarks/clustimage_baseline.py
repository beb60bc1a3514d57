#!/usr/bin/env python3
"""clustimage's defaults on the labelled sets, for the comparison in issue 11.

clustimage is NOT a dependency of clusterimg: run this with a throwaway
virtual environment, e.g.

    python3 -m venv /tmp/ci_venv && /tmp/ci_venv/bin/pip install clustimage
    /tmp/ci_venv/bin/python benchmarks/clustimage_baseline.py [BENCH_LABELLED_FLAT]

For each set and each of clustimage's "pca" and "hog" methods it runs
``Clustimage(method=...).fit_transform(paths)`` with every other option at
its default and prints the number of clusters and the ARI against truth.json
(files it leaves out count as noise). Slow: minutes per set on 2 cores.
"""
import json
import sys
import time
from pathlib import Path

from clustimage import Clustimage
from sklearn.metrics import adjusted_rand_score

root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1].parent / "shared/bench/labelled_flat"
for name in ("tuxpaint_stamps", "fashion_mnist"):
    truth = json.loads((root / name / "truth.json").read_text())
    cls = {m: gi for gi, g in enumerate(truth["groups"]) for m in g}
    names = sorted(cls)
    for method in ("pca", "hog"):
        t0 = time.time()
        res = Clustimage(method=method, verbose=0).fit_transform([str(root / name / "images" / n) for n in names])
        got = {Path(p).name: lab for p, lab in zip(res["pathnames"], res["labels"])}
        labels = [got.get(n, -1) for n in names]
        print(f"{name} {method}: clustimage defaults: k {len(set(labels))} "
              f"ARI {adjusted_rand_score([cls[n] for n in names], labels):.3f} {time.time() - t0:.0f}s", flush=True)
