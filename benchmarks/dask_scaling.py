#!/usr/bin/env python3
"""Issue 18's scaling check: the batch stage on Dask against the local pool.

    python3 benchmarks/dask_scaling.py                          # phash and orb on the 6,273 images
    python3 benchmarks/dask_scaling.py --method orb --target s1  # orb on one 2,091-image subfolder

Builds (once, with benchmarks/speed.py's builder) DATA/s1, DATA/s2, DATA/s3
(make_neardup.py ... --groups 130 --singletons 11 --variants 15 --seed S
--max-side 1600: 2,091 images each), then times the whole command
`python -m clusterimg run TARGET --no-cache --transfer none --json --quiet`
of this checkout per method under four engines: the local process pool with
`-j 1` and `-j 2`, and `--scheduler local:1` / `local:2` (a LocalCluster of
1 or 2 worker processes, started by the command and counted in its time).
It prints wall time, images/s, the scaling ratio (local:1 / local:2; on a
2-core machine 2 workers can at best halve the time), Dask's overhead
against the local pool at one worker (local:1 / -j 1) and at two
(local:2 / -j 2), the load average before each run (the machine may be
shared) and the CPU seconds of the command's whole process tree (steadier
than wall time on a shared machine), and checks that all four manifests are
the same. Not part of the test run.
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
from speed import build, sample, tree  # noqa: E402  (the 6,273-image set; a process tree and its CPU seconds)

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"-j 1": ["--workers", "1"], "-j 2": ["--workers", "2"],
           "local:1": ["--scheduler", "local:1"], "local:2": ["--scheduler", "local:2"]}


def comparable(manifest: dict) -> dict:
    manifest = dict(manifest)
    manifest.pop("created", None)
    manifest["stats"] = {k: v for k, v in manifest["stats"].items() if k != "seconds"}
    return manifest


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(target: Path, method: str, engine: list[str], extra: list[str]) -> tuple[float, dict, float, float]:
    """Wall seconds, manifest, load average before, and CPU seconds of the
    whole process tree (sampled every 0.1 s from /proc, as speed.py does:
    the pool's workers are not children of the main process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "clusterimg", "run", str(target), "--method", method,
                                 "--no-cache", "--transfer", "none", "--json", "--quiet", *engine, *extra],
                                env=env, stdout=out, stderr=err, text=True)
        cpu: dict[int, float] = {}
        while proc.poll() is None:
            sample(tree(proc.pid), cpu)
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{method} {' '.join(engine)} failed ({proc.returncode}): {err.read().strip()[-2000:]}")
        return seconds, json.load(out), load, sum(cpu.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", action="append", help="backends [default: phash and orb]")
    ap.add_argument("--target", choices=("s1", "s2", "s3", "all"), default="all",
                    help="one 2,091-image subfolder or all three [default: all]")
    ap.add_argument("--data", type=Path, default=Path("/tmp/clusterimg-speed"),
                    help="where the set is (or is built) [default: /tmp/clusterimg-speed]")
    ap.add_argument("--engine", action="append", choices=sorted(ENGINES), help="[default: all four]")
    ap.add_argument("--extra", default="", help="extra options for clusterimg run")
    args = ap.parse_args()
    build(args.data)
    target = args.data if args.target == "all" else args.data / args.target
    engines = args.engine or list(ENGINES)
    print(f"# {target} ({os.cpu_count()} CPUs); uptime: {uptime()}")
    print("| method | engine | seconds | images/s | CPU s (tree) | load before |")
    print("|---|---|---|---|---|---|")
    for method in args.method or ["phash", "orb"]:
        times, manifests = {}, {}
        for name in engines:
            seconds, manifest, load, cpu = timed(target, method, ENGINES[name], args.extra.split())
            times[name], manifests[name] = seconds, comparable(manifest)
            images = manifest["stats"]["images"]
            print(f"| {method} | {name} | {seconds:.1f} | {images / seconds:.0f} | {cpu:.1f} | {load:.2f} |",
                  flush=True)
        same = all(m == manifests[engines[0]] for m in manifests.values())
        ratio = lambda a, b: f"{times[a] / times[b]:.2f}" if a in times and b in times else "-"
        print(f"\n{method}: scaling local:1 / local:2 = {ratio('local:1', 'local:2')} (2.00 would be perfect); "
              f"overhead local:1 / -j 1 = {ratio('local:1', '-j 1')}, local:2 / -j 2 = {ratio('local:2', '-j 2')}; "
              f"same manifest under every engine: {same}\n", flush=True)
        if not same:
            return 1
    print(f"# uptime after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
