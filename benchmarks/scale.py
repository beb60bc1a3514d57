#!/usr/bin/env python3
"""Time each backend end to end on N generated photos: images/s, peak memory, F1.

    python3 benchmarks/scale.py --n 1000 --n 5000 --method phash --method orb
    python3 benchmarks/scale.py --n 20000 --method phash --method minhash

Builds (once, then reuses) a folder of about N near-duplicate benchmark images
with ../shared/bench/make_neardup.py (~1,600 px photos, 16 edited copies per
group), in parts of up to ~3,400 images made with different seeds; the parts'
truths are merged by source photo, so two parts' copies of one photo count as
one group. Then runs `clusterimg run DIR --transfer none` per backend, samples
the memory of the whole process tree (the main process and its workers) every
0.1 s, and scores the manifest with ../shared/bench/score.py.
Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_path import BENCH  # noqa: E402

PART_GROUPS, PART_VARIANTS, PART_SINGLETONS = 200, 16, 13


def build(n: int, dest: Path, max_side: int = 1600) -> Path:
    """A folder dest/images with about n images and dest/truth.json."""
    if (dest / "truth.json").is_file():
        return dest
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[str]] = {}
    tiers: dict[str, dict] = {}
    built, part = 0, 0
    while built < n:
        remaining = n - built
        groups = min(PART_GROUPS, remaining // (PART_VARIANTS + 1))
        singletons = min(PART_SINGLETONS if groups else 200, remaining - groups * (PART_VARIANTS + 1))
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            subprocess.run([sys.executable, str(BENCH / "make_neardup.py"), str(BENCH / "photos"), tmp,
                            "--groups", str(groups), "--singletons", str(singletons),
                            "--variants", str(PART_VARIANTS), "--seed", str(100 + part),
                            "--max-side", str(max_side)], check=True, stdout=subprocess.DEVNULL)
            truth = json.loads((Path(tmp) / "truth.json").read_text())
            for path in (Path(tmp) / "images").iterdir():
                path.rename(images / f"p{part:02d}_{path.name}")
            for name in truth["singletons"]:
                by_source.setdefault(truth["sources"][name], []).append(f"p{part:02d}_{name}")
            for group in truth["groups"]:  # copies carry their original's source
                for v in group:
                    by_source.setdefault(truth["sources"][group[0]], []).append(f"p{part:02d}_{v}")
            tiers.update({f"p{part:02d}_{k}": v for k, v in truth["variants"].items()})
            built += groups * (PART_VARIANTS + 1) + singletons
        part += 1
    members = [sorted(set(m), key=lambda x: ("_orig" not in x, x)) for m in by_source.values()]
    merged = {"groups": [m for m in members if len(m) > 1], "singletons": [m[0] for m in members if len(m) == 1],
              "variants": tiers}
    (dest / "truth.json").write_text(json.dumps(merged))
    return dest


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return total


def timed_run(args: list[str]) -> tuple[float, int, int]:
    """(seconds, peak tree memory in bytes, exit status) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    return time.perf_counter() - start, peak, proc.returncode


def score(truth: Path, manifest: Path) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / "score.py"), str(truth), str(manifest)],
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, action="append", help="folder sizes [default: 1000]")
    ap.add_argument("--method", action="append", help="backends [default: phash]")
    ap.add_argument("--data", type=Path, default=Path("/tmp/clusterimg-scale"), help="where folders are built")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--extra", default="", help="extra options for clusterimg run, e.g. '--exhaustive'")
    args = ap.parse_args()
    clusterimg = shutil.which("clusterimg") or "clusterimg"
    print("| N | method | seconds | images/s | peak memory (MB) | precision | recall | F1 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n or [1000]:
        folder = build(n, args.data / f"n{n}")
        for method in args.method or ["phash"]:
            out = Path(tempfile.mkdtemp(prefix="scale-out-"))
            cmd = [clusterimg, "run", str(folder / "images"), "--method", method, "--transfer", "none",
                   "--out", str(out / "o"), "--quiet", "--no-cache", "--workers", str(args.workers), *args.extra.split()]
            seconds, peak, status = timed_run(cmd)
            if status != 0:
                print(f"| {n} | {method} | failed (exit {status}) | | | | | |", flush=True)
                continue
            images = json.loads((out / "o" / "clusters.json").read_text())["stats"]["images"]
            s = score(folder / "truth.json", out / "o" / "clusters.json")
            print(f"| {images} | {method} | {seconds:.1f} | {images / seconds:.0f} | {peak / 2**20:.0f} | "
                  f"{s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} |", flush=True)
            shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
