#!/usr/bin/env python3
"""Recall by family of several backends on a benchmark with families (issue 16).

    python3 benchmarks/scene.py                                   # phash, orb, scene on ../shared/bench/real_dev
    python3 benchmarks/scene.py --bench ../shared/bench/dev --method orb --method scene
    python3 benchmarks/scene.py --method scene --code /tmp/old   # another checkout (git archive REV | tar -x -C /tmp/old)

Runs `clusterimg run --no-cache --transfer none` per method (default options),
scores it with the benchmark's score.py, and prints one markdown row per
method: precision, recall, F1, tier recall, family recall, wall time of the
run. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench" / "real_dev"))
    parser.add_argument("--method", action="append", help="backend (repeatable); default phash, orb, scene")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run [default: this one]")
    args = parser.parse_args()
    bench = Path(args.bench).resolve()
    scorer = bench.parent / "score.py"
    env = dict(os.environ, PYTHONPATH=str(args.code.resolve()))
    rows = []
    for method in args.method or ["phash", "orb", "scene"]:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "out")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "clusterimg", "run", str(bench / "images"), "--method", method,
                            "--no-cache", "--transfer", "none", "--out", out], check=True, env=env,
                           stdout=subprocess.DEVNULL, cwd=args.code.resolve())  # `-m` imports from the cwd first
            wall = time.perf_counter() - start
            text = subprocess.run([sys.executable, str(scorer), str(bench / "truth.json"), str(Path(out) / "clusters.json")],
                                  check=True, capture_output=True, text=True).stdout
        result = json.loads(text.strip().splitlines()[-1])
        rows.append((method, result, wall))
    families = sorted({f for _, r, _ in rows for f in r["family_recall"]})
    tiers = ["easy", "medium", "hard"]
    print("| method | precision | recall | F1 | " + " / ".join(tiers) + " | " + " | ".join(families) + " | wall (s) |")
    print("|---" * (6 + len(families)) + "|")
    for method, r, wall in rows:
        tier = " / ".join(f"{r['tier_recall'].get(t, float('nan')):.2f}" for t in tiers)
        fam = " | ".join(f"{r['family_recall'].get(f, float('nan')):.2f}" for f in families)
        print(f"| {method} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {tier} | {fam} | {wall:.0f} |")


if __name__ == "__main__":
    main()
