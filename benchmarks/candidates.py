#!/usr/bin/env python3
"""Candidate search against --exhaustive on a benchmark, per backend.

    python3 benchmarks/candidates.py                  # every backend on ../shared/bench/dev
    python3 benchmarks/candidates.py --method orb

For each backend at its default threshold (one batch): the pairs found by
scoring every pair, the pairs found through the backend's candidate search,
the index's recall (share of the exhaustive pairs it also finds), the search
times and their ratio, and the F1 of both groupings. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibrate import DEFAULT_BENCH, labels_at, pairwise_scores  # noqa: E402
from clusterimg.images import discover  # noqa: E402
from clusterimg.features import available, get_method  # noqa: E402
from clusterimg.engine.extract import extract_features  # noqa: E402
from clusterimg.engine.search import find_pairs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--method", action="append")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    truth = json.loads((args.bench / "truth.json").read_text())
    root = args.bench / "images"
    paths, _ = discover(root)
    print("| method | threshold | exhaustive pairs | candidate pairs | index recall | exhaustive s | candidates s "
          "| speed-up | F1 exhaustive | F1 candidates |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.method or list(available()):
        method = get_method(name)
        t = method.default_threshold
        extracted = extract_features(method, [str(root / p) for p in paths], args.workers)
        names = [p for p, (f, _) in zip(paths, extracted) if f is not None]
        stacked = method.stack([f for f, _ in extracted if f is not None])
        found = {}
        for exhaustive in (True, False):
            start = time.perf_counter()
            i, j, s = find_pairs(method, stacked, len(names), t, exhaustive=exhaustive)
            found[exhaustive] = (time.perf_counter() - start, set(zip(i.tolist(), j.tolist())),
                                 pairwise_scores(truth, names, labels_at(len(names), i, j, s, t))["f1"])
        (te, pe, fe), (tc, pc, fc) = found[True], found[False]
        recall = len(pe & pc) / len(pe) if pe else 1.0
        print(f"| {name} | {t:g} | {len(pe)} | {len(pc)} | {recall:.3f} | {te:.1f} | {tc:.1f} | "
              f"{te / max(tc, 1e-9):.1f}x | {fe:.3f} | {fc:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
