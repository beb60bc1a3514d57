#!/usr/bin/env python3
"""Sweep thresholds per backend on a benchmark with ground truth; pick the F1-best.

    python3 benchmarks/calibrate.py                       # every backend, ../shared/bench/dev
    python3 benchmarks/calibrate.py --method orb --method phash --option phash.rotations=true
    python3 benchmarks/calibrate.py --markdown            # the README's results table

Features are extracted once and every pair is scored once at the lowest
threshold of the ladder (one batch, as `clusterimg run --batch-size 0`); each
threshold then only re-groups the stored pairs, so a sweep costs one run.
Scores are pairwise precision / recall / F1 over all pairs put in one cluster,
the same as ../shared/bench/score.py computes. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from math import comb
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterimg.clustering.threshold import UnionFind  # noqa: E402
from clusterimg.images import discover  # noqa: E402
from clusterimg.features import available, get_method  # noqa: E402
from clusterimg.engine.extract import extract_features  # noqa: E402
from clusterimg.engine.search import find_pairs  # noqa: E402

from bench_path import BENCH  # noqa: E402

DEFAULT_BENCH = BENCH / "dev"


def pairwise_scores(truth: dict, names: list[str], labels: list[int]) -> dict:
    """Pairwise precision, recall, F1 and recall by tier of a labelling of ``names``."""
    true_of = {m: f"g{gi}" for gi, g in enumerate(truth["groups"]) for m in g}
    true_of.update({s: f"s:{s}" for s in truth["singletons"]})
    pred_of = {Path(n).name: lab for n, lab in zip(names, labels)}
    for m in true_of:  # skipped images count as their own outliers
        pred_of.setdefault(m, f"missing:{m}")
    table = Counter((true_of[m], pred_of[m]) for m in true_of)
    rows, cols = Counter(), Counter()
    for (t, p), n in table.items():
        rows[t] += n
        cols[p] += n
    tp = sum(comb(n, 2) for n in table.values())
    true_pairs = sum(comb(n, 2) for n in rows.values())
    pred_pairs = sum(comb(n, 2) for n in cols.values())
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tiers: dict[str, list[int]] = {}
    for g in truth["groups"]:
        for v in g[1:]:
            tier = truth.get("variants", {}).get(v, {}).get("tier", "?")
            hit = pred_of[v] == pred_of[g[0]] and cols[pred_of[v]] > 1
            tiers.setdefault(tier, []).append(hit)
    return {"precision": precision, "recall": recall, "f1": f1,
            "tier_recall": {t: float(np.mean(h)) for t, h in sorted(tiers.items())}}


def labels_at(n: int, i: np.ndarray, j: np.ndarray, s: np.ndarray, threshold: float) -> list[int]:
    uf = UnionFind(n)
    keep = s >= threshold
    uf.union_pairs(i[keep], j[keep])
    return [uf.find(k) for k in range(n)]


def parse_options(items: list[str]) -> dict[str, dict]:
    """'method.name=value' strings -> {method: {name: value}} (JSON values, else strings)."""
    out: dict[str, dict] = {}
    for item in items:
        key, _, raw = item.partition("=")
        method, _, name = key.partition(".")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(method, {})[name] = value
    return out


def calibrate(method_name: str, options: dict, bench: Path, ladder: np.ndarray, workers: int,
              exhaustive: bool) -> dict:
    truth = json.loads((bench / "truth.json").read_text())
    method = get_method(method_name, **options)
    root = bench / "images"
    paths, _ = discover(root)
    t0 = time.perf_counter()
    extracted = extract_features(method, [str(root / p) for p in paths], workers)
    names = [p for p, (f, _) in zip(paths, extracted) if f is not None]
    features = [f for f, _ in extracted if f is not None]
    t1 = time.perf_counter()
    stacked = method.stack(features)
    i, j, s = find_pairs(method, stacked, len(features), float(ladder.min()), exhaustive=exhaustive)
    t2 = time.perf_counter()
    rows = []
    for t in ladder:
        sc = pairwise_scores(truth, names, labels_at(len(features), i, j, s, float(t)))
        rows.append({"threshold": round(float(t), 4), **sc})
    best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
    return {"method": method_name, "params": method.params, "images": len(paths),
            "extract_s": t1 - t0, "search_s": t2 - t1, "rows": rows, "best": best,
            "at_default": min(rows, key=lambda r: abs(r["threshold"] - method.default_threshold)),
            "default_threshold": method.default_threshold}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with images/ and truth.json")
    ap.add_argument("--method", action="append", help="backend(s) to calibrate [default: all]")
    ap.add_argument("--option", action="append", default=[], help="backend option, e.g. phash.hash_size=16")
    ap.add_argument("--lo", type=float, default=0.3)
    ap.add_argument("--hi", type=float, default=0.99)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--exhaustive", action="store_true", help="score every pair, not the candidate search")
    ap.add_argument("--markdown", action="store_true", help="print the README results table")
    ap.add_argument("--json", type=Path, help="also write all rows here")
    args = ap.parse_args()
    ladder = np.round(np.arange(args.lo, args.hi + 1e-9, args.step), 4)
    options = parse_options(args.option)
    results = []
    for name in args.method or list(available()):
        r = calibrate(name, options.get(name, {}), args.bench, ladder, args.workers, args.exhaustive)
        results.append(r)
        b, d = r["best"], r["at_default"]
        print(f"{name:8s} best threshold {b['threshold']:.2f}: P {b['precision']:.3f} R {b['recall']:.3f} "
              f"F1 {b['f1']:.3f} tiers {json.dumps({k: round(v, 2) for k, v in b['tier_recall'].items()})} | "
              f"default {r['default_threshold']:g}: F1 {d['f1']:.3f} | extract {r['extract_s']:.1f}s "
              f"search {r['search_s']:.1f}s", flush=True)
    if args.markdown:
        print("\n| method | default threshold | precision | recall | F1 | easy / medium / hard recall | "
              "extract + search (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            d = r["at_default"]
            t = d["tier_recall"]
            print(f"| {r['method']} | {r['default_threshold']:g} | {d['precision']:.3f} | {d['recall']:.3f} | "
                  f"{d['f1']:.3f} | {t.get('easy', 0):.2f} / {t.get('medium', 0):.2f} / {t.get('hard', 0):.2f} | "
                  f"{r['extract_s']:.1f} + {r['search_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
