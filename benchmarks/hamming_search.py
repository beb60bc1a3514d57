#!/usr/bin/env python3
"""Time the exact Hamming pair search on random 64-bit hashes.

    python3 benchmarks/hamming_search.py                  # 1,000,000 hashes, distance <= 8
    python3 benchmarks/hamming_search.py --n 20000 --check  # also compare with all-pairs

Random hashes have almost no natural pairs at small distances, so pairs are
planted (a copy of a random hash with a few bits flipped, up to the distance)
and the search must find every one of them. Prints the time and the peak
memory of the process. Not part of the test run.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clusterimg.engine.hamming import all_pairs_within, index_plan, pairs_within  # noqa: E402


def random_hashes_with_planted_pairs(n: int, planted: int, max_distance: int, seed: int):
    """(words (n, 1) uint64, planted pairs (i, j)): the last ``planted`` rows are
    copies of random earlier rows with 0..max_distance bits flipped."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(n, 1), dtype=np.uint64, endpoint=False)
    source = rng.choice(n - planted, size=planted, replace=False)
    copy = np.arange(n - planted, n)
    for k, (s, c) in enumerate(zip(source, copy)):
        flips = rng.choice(64, size=k % (max_distance + 1), replace=False)
        mask = np.uint64(0)
        for f in flips:
            mask |= np.uint64(1) << np.uint64(f)
        words[c, 0] = words[s, 0] ^ mask
    return words, (source.astype(np.int64), copy.astype(np.int64))


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--distance", type=int, default=8)
    ap.add_argument("--planted", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="compare with the all-pairs search (small n only)")
    args = ap.parse_args()

    words, (src, dst) = random_hashes_with_planted_pairs(args.n, args.planted, args.distance, args.seed)
    print(f"{args.n:,} random 64-bit hashes, {args.planted} planted pairs, distance <= {args.distance}; "
          f"plan (cost, chunks): {index_plan(args.n, 64, args.distance)}; "
          f"memory before search {peak_memory_mb():.0f} MB", flush=True)
    t = time.perf_counter()
    i, j = pairs_within(words, args.distance)
    seconds = time.perf_counter() - t
    found = set(zip(i.tolist(), j.tolist()))
    recalled = sum((min(a, b), max(a, b)) in found for a, b in zip(src.tolist(), dst.tolist()))
    print(f"search {seconds:.1f} s, {len(i):,} pairs found, planted recalled {recalled}/{args.planted}, "
          f"peak memory {peak_memory_mb():.0f} MB")
    if args.check:
        bi, bj = all_pairs_within(words, args.distance)
        same = set(zip(bi.tolist(), bj.tolist())) == found
        print(f"all-pairs search: {len(bi):,} pairs; identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
