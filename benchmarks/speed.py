#!/usr/bin/env python3
"""Issue 15's speed check: whole-command wall time, images/s, CPU seconds and
peak memory of the process tree, on the 6,273-image set.

    python3 benchmarks/speed.py --method orb --target s1 --target all
    python3 benchmarks/speed.py --method phash --target all

Builds (once) DATA/s1, DATA/s2, DATA/s3 with ../shared/bench/make_neardup.py
(--groups 130 --singletons 11 --variants 15 --max-side 1600, seeds 1, 2, 3:
2,091 images each), then runs this checkout's
`python -m clusterimg run TARGET --workers 2 --no-cache --transfer none` per
method and target (`s1`: one subfolder; `all`: the three), sampling every
0.1 s the resident memory and the CPU time of the whole process tree (main
process, forkserver and workers). One-subfolder targets are also scored with
score.py. The machine is shared: the load average is printed with each row,
and CPU seconds say how much work was done whatever the load. Not part of
the test run.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_path import BENCH, ROOT  # noqa: E402
from scale import score  # noqa: E402  (score.py on a manifest, as scale.py runs it)

SEEDS = (1, 2, 3)
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build(data: Path) -> None:
    for seed in SEEDS:
        part = data / f"s{seed}"
        if (part / "truth.json").is_file():
            continue
        subprocess.run([sys.executable, str(BENCH / "make_neardup.py"), str(BENCH / "photos"), str(part),
                        "--groups", "130", "--singletons", "11", "--variants", "15", "--seed", str(seed),
                        "--max-side", "1600"], check=True, stdout=subprocess.DEVNULL)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, whichever thread started them (a
    LocalCluster's workers are started by its event loop's thread)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return found


def sample(pids: list[int], cpu: dict[int, float]) -> int:
    """Resident bytes of ``pids``; records each one's CPU seconds in ``cpu``."""
    rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu[p] = (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return rss


def timed_run(args: list[str], env: dict, cwd: Path) -> tuple[float, int, float, int]:
    """(wall seconds, peak tree memory in bytes, CPU seconds of the tree, exit status)."""
    start = time.perf_counter()
    # run from the measured checkout: `python -m` puts the working folder first on sys.path
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    peak, cpu = 0, {}
    while proc.poll() is None:
        peak = max(peak, sample(tree(proc.pid), cpu))
        time.sleep(0.1)
    wall = time.perf_counter() - start
    return wall, peak, sum(cpu.values()), proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", action="append", help="backends [default: phash and orb]")
    ap.add_argument("--target", action="append", choices=("s1", "s2", "s3", "all"), help="[default: s1 and all]")
    ap.add_argument("--data", type=Path, default=Path("/tmp/clusterimg-speed"), help="where the set is built")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extra", default="", help="extra options for clusterimg run")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure [default: this one]")
    args = ap.parse_args()
    build(args.data)
    env = dict(os.environ, PYTHONPATH=str(args.code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("| target | method | images | seconds | images/s | CPU s (tree) | peak memory (MB) | load before | F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target in args.target or ["s1", "all"]:
        folder = (args.data if target == "all" else args.data / target / "images").resolve()
        for method in args.method or ["phash", "orb"]:
            out = Path(tempfile.mkdtemp(prefix="speed-out-")) / "o"
            cmd = [sys.executable, "-m", "clusterimg", "run", str(folder), "--method", method, "--transfer", "none",
                   "--out", str(out), "--quiet", "--no-cache", "--workers", str(args.workers), *args.extra.split()]
            load = os.getloadavg()[0]
            wall, peak, cpu, status = timed_run(cmd, env, args.code)
            if status != 0:
                print(f"| {target} | {method} | failed (exit {status}) | | | | | {load:.1f} | |", flush=True)
                continue
            images = json.loads((out / "clusters.json").read_text())["stats"]["images"]
            f1 = ""
            if target != "all":
                f1 = f"{score(args.data / target / 'truth.json', out / 'clusters.json')['f1']:.4f}"
            print(f"| {target} | {method} | {images} | {wall:.1f} | {images / wall:.0f} | {cpu:.1f} | "
                  f"{peak / 2**20:.0f} | {load:.1f} | {f1} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
