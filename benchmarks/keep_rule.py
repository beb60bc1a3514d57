#!/usr/bin/env python3
"""Which copy `dedupe --keep best` keeps, by the kind of edit named in the
file (make_neardup names: g0003_orig.jpg, g0003_v3_border.jpg ...): with
most pixels and the largest file alone, with the bordered-copy rule, and with
the noisy-copy rule too (the default). Nothing is moved: only plans are made.

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
    both = kept_kinds(manifest, args.out)
    least_noisy = dedupe.least_noisy
    dedupe.least_noisy = lambda ranked, *args: ranked[0]  # no copy counts as noisy
    borders = kept_kinds(manifest, args.out)
    dedupe.picture_facts = lambda path: (0.0, (1.0, 1.0))  # no borders seen either: "most pixels" alone
    neither = kept_kinds(manifest, args.out)
    dedupe.least_noisy = least_noisy
    print(f"{sum(both.values())} clusters; kept, by kind of copy")
    print("most pixels only:       ", dict(neither.most_common()))
    print("+ bordered-copy rule:   ", dict(borders.most_common()))
    print("+ noisy-copy rule:      ", dict(both.most_common()))


if __name__ == "__main__":
    main()
