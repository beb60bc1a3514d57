#!/usr/bin/env python3
"""Which copy `dedupe --keep best` keeps, by the kind of edit named in the
file (make_neardup names: g0003_orig.jpg, g0003_v3_border.jpg ...), with and
without the bordered-copy rule. Nothing is moved: only plans are made.

    clusterimg run ../shared/bench/dev/images --out /tmp/dev_orb --transfer none -q
    python3 benchmarks/keep_rule.py /tmp/dev_orb
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from clusterimg import dedupe


def kept_kinds(manifest: dict, out: Path) -> collections.Counter:
    plan = dedupe.plan_dedupe(manifest, out, keep="best")
    return collections.Counter(Path(p).stem.rsplit("_", 1)[-1] for _, p in plan.kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the output folder of a --transfer none run")
    args = ap.parse_args()
    manifest = json.loads((args.out / "clusters.json").read_text(encoding="utf-8"))
    with_rule = kept_kinds(manifest, args.out)
    dedupe.picture_facts = lambda path: (0.0, (1.0, 1.0))  # no borders seen: the plain "most pixels" rule
    without = kept_kinds(manifest, args.out)
    print(f"{sum(with_rule.values())} clusters; kept, by kind of copy")
    print("most pixels only:    ", dict(without.most_common()))
    print("bordered-copy rule:  ", dict(with_rule.most_common()))


if __name__ == "__main__":
    main()
