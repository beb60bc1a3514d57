"""False pairs on a folder of unrelated photos, per backend, at the default
threshold (issue: a default must not join unrelated photos).

    python3 benchmarks/false_positives.py [--folder ../shared/bench/photos] [--method phash ...]

Every pair put in one cluster is a false pair here (the folder holds no two
shots of one scene). Prints, per method: threshold, clusters, false pairs,
and the highest pair score found at a low floor, i.e. how far the default
sits above the closest unrelated pair.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import clusterimg  # noqa: E402
from clusterimg import api  # noqa: E402
from clusterimg.engine.search import find_pairs  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, default=BENCH / "photos")
    parser.add_argument("--method", action="append", help="backend(s) (default: all near-duplicate ones)")
    args = parser.parse_args()
    methods = args.method or [n for n, c in clusterimg.methods().items() if c.kind == "pairs"]
    print(f"{'method':8s} {'threshold':>9s} {'clusters':>8s} {'false pairs':>11s} {'top unrelated pair':>18s}")
    for name in methods:
        result = clusterimg.cluster(args.folder, method=name, cache=True, workers=2, keep_features=True)
        pairs = sum(len(c) * (len(c) - 1) // 2 for c in result.clusters)
        backend, _ = api.configure(name)
        feats = [result.features[p] for p in sorted(result.features)]
        stacked = backend.stack(feats)
        _, _, s = find_pairs(backend, stacked, len(feats), 0.3)
        top = max(s, default=0.0)
        print(f"{name:8s} {result.threshold:9.2f} {len(result.clusters):8d} {pairs:11d} {top:18.3f}", flush=True)


if __name__ == "__main__":
    main()
