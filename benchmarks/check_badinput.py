#!/usr/bin/env python3
"""Check a manifest of ../shared/bench/badinput against its expect.json.

    clusterimg run ../shared/bench/badinput/images --out /tmp/bad --transfer none
    python3 benchmarks/check_badinput.py /tmp/bad/clusters.json

Every file must appear exactly once (clusters + outliers + skipped), each
`pairs` entry must share a cluster, each `skip` entry must be skipped with a
reason. Exit status 0 when all hold. Not part of the test run.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from bench_path import BENCH as SHARED  # noqa: E402

BENCH = SHARED / "badinput"


def main(manifest_path: str) -> int:
    manifest = json.loads(Path(manifest_path).read_text())
    expect = json.loads((BENCH / "expect.json").read_text())
    cluster_of = {m["path"]: c["id"] for c in manifest["clusters"] for m in c["members"]}
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    seen = Counter(list(cluster_of) + [o["path"] for o in manifest["outliers"]] + list(skipped))
    on_disk = sorted(p.relative_to(BENCH / "images").as_posix() for p in (BENCH / "images").rglob("*") if p.is_file())
    problems = [f"missing: {p}" for p in on_disk if seen[p] == 0]
    problems += [f"listed {n} times: {p}" for p, n in seen.items() if n > 1]
    for a, b in expect["pairs"]:
        if a not in cluster_of or cluster_of.get(a) != cluster_of.get(b):
            problems.append(f"not in one cluster: {a} + {b}")
    for name in expect["skip"]:
        if not skipped.get(name):
            problems.append(f"not skipped: {name}")
    for name, reason in sorted(skipped.items()):
        print(f"skipped  {name}: {reason}")
    print(f"{len(on_disk)} files, {len(expect['pairs'])} expected pairs, {len(expect['skip'])} expected skips: "
          + ("all OK" if not problems else f"{len(problems)} problems"))
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
