#!/usr/bin/env python3
"""What the JPEG decoder alone allows on this machine: every JPEG under DATA
decoded at 1/8 size in gray (libjpeg's DCT scaling, through OpenCV: the
cheapest decode phash's thumbnail can come from), nothing else: no header
checks, no hashing, no output. With --workers threads (OpenCV's decoder
releases the GIL). Issue 15 compares phash's whole-command speed
(benchmarks/speed.py) with this number, measured in the same minute.

    python3 benchmarks/decode_ceiling.py /tmp/speed_bench/all --workers 2
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np


def decode(path: str) -> tuple[int, int]:
    arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return arr.shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    files = sorted(str(p) for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    for _ in range(args.repeat):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(decode, files, chunksize=64))
        seconds = time.perf_counter() - started
        print(f"{len(files)} JPEGs, {args.workers} threads: {seconds:.2f} s = {len(files) / seconds:.0f} images/s "
              f"(load before {load:.1f})")


if __name__ == "__main__":
    main()
