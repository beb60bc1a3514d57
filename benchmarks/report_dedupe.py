#!/usr/bin/env python3
"""Measurements for the HTML report and for dedupe / undo. Not part of the tests.

    # report.html of a finished run, opened in headless Chromium: console
    # errors, counts, and screenshots of a few views (look at them)
    python3 benchmarks/report_dedupe.py browse /tmp/rep_dev --shots /tmp/rep_shots

    # time `clusterimg report` on the 6,273-image set: three make_neardup.py
    # seeds (130 groups x 16 + 11 singletons, 1600 px) in three subfolders,
    # clustered with phash --transfer none; cold (no thumbnails) and warm
    python3 benchmarks/report_dedupe.py build-time /tmp/rep_big --workers 2

    # dedupe -> undo on a copy of the dev images: md5 multiset identical,
    # every path back; then dedupe SIGKILLed at 5 random moments, re-run,
    # nothing lost, then undone
    python3 benchmarks/report_dedupe.py roundtrip /tmp/rep_rt --kills 5 --seed 1 [--method phash]

Run from the project root (it runs `python -m clusterimg` with PYTHONPATH set
to the project root).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/bench beside the project (or beside the folder of its worktrees)
BENCH = next((p for p in (ROOT.parent / "shared" / "bench", ROOT.parents[1] / "shared" / "bench") if p.is_dir()),
             ROOT.parent / "shared" / "bench")
sys.path.insert(0, str(ROOT / "tests"))
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "clusterimg", *args], env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"clusterimg {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# -- browse -------------------------------------------------------------------------


def browse(out: Path, shots: Path) -> None:
    from chromium_cdp import Chromium

    page = out / "report.html"
    if not page.is_file():
        started = time.perf_counter()
        print(cli("report", str(out), "-j", "2").stdout.strip(), f"({time.perf_counter() - started:.1f} s wall)")
    shots.mkdir(parents=True, exist_ok=True)
    loaded = ("Array.from(document.images).every(i => i.getBoundingClientRect().top > innerHeight"
              " || (i.complete && i.naturalWidth > 0))")
    with Chromium(width=1280, height=1400) as b:
        p = b.open(page.as_uri())
        p.wait_for("document.body.dataset.ready === '1'")
        p.wait_for(loaded)
        facts = p.evaluate("({sections: document.querySelectorAll('section.cluster').length,"
                           " images: document.images.length, page: document.getElementById('pageinfo').textContent,"
                           " counts: document.querySelector('.counts').textContent,"
                           " decisions: document.getElementById('decisioninfo').textContent})")
        print("page 1:", json.dumps(facts, ensure_ascii=False))
        print(f"first screen with its images loaded {p.evaluate('performance.now()'):.0f} ms after navigation; "
              "page render (next, then prev) in ms:",
              p.evaluate("(() => { const t0 = performance.now(); document.getElementById('next').click();"
                         " const t1 = performance.now(); document.getElementById('prev').click();"
                         " return [Math.round(t1 - t0), Math.round(performance.now() - t1)]; })()"))
        (shots / "1-first-page.png").write_bytes(p.screenshot())
        if facts["page"].startswith("page 1 / 1"):
            print("one page: no paging, filter or outliers steps")
        else:
            p.key("ArrowRight", key_code=39)
            p.wait_for("document.body.dataset.page === '2'")
            p.wait_for(loaded)
            print("after ArrowRight:", p.evaluate("document.getElementById('pageinfo').textContent"),
                  "first cluster", p.evaluate("document.querySelector('section.cluster').id"))
            (shots / "2-second-page.png").write_bytes(p.screenshot())
            p.evaluate("(() => { const f = document.getElementById('filter'); f.value = 'g0042';"
                       " f.dispatchEvent(new Event('input')); })()")
            p.wait_for("document.getElementById('pageinfo').textContent.includes('matching')")
            p.wait_for(loaded)
            print("filter g0042:", p.evaluate("document.getElementById('pageinfo').textContent"))
            (shots / "3-filter.png").write_bytes(p.screenshot())
            p.evaluate("(() => { const f = document.getElementById('filter'); f.value = '';"
                       " f.dispatchEvent(new Event('input')); document.getElementById('tab-outliers').click(); })()")
            p.wait_for("document.getElementById('tab-outliers').getAttribute('aria-pressed') === 'true'"
                       " && !document.getElementById('pageinfo').textContent.includes('matching')")
            p.wait_for(loaded)
            print("outliers tab:", p.evaluate("document.getElementById('pageinfo').textContent"),
                  "images", p.evaluate("document.images.length"))
            (shots / "4-outliers.png").write_bytes(p.screenshot())
        print("console errors:", b.errors)
        print("console messages:", b.console)
    print(f"screenshots in {shots}")


# -- build time ---------------------------------------------------------------------


def build_time(dest: Path, workers: int) -> None:
    images = dest / "images"
    if not images.is_dir():
        for seed in (1, 2, 3):
            subprocess.run([sys.executable, str(BENCH / "make_neardup.py"), str(BENCH / "photos"),
                            str(dest / f"part{seed}"), "--groups", "130", "--singletons", "11", "--variants", "15",
                            "--seed", str(seed), "--max-side", "1600"], check=True, capture_output=True)
        images.mkdir()
        for seed in (1, 2, 3):
            (dest / f"part{seed}" / "images").rename(images / f"seed{seed}")
    count = sum(1 for _ in images.rglob("*.jpg"))
    out = dest / "out"
    if not (out / "clusters.json").is_file():
        started = time.perf_counter()
        proc = cli("run", str(images), "--method", "phash", "--transfer", "none", "--out", str(out),
                   "-j", str(workers), "--no-cache")
        print(proc.stdout.strip(), f"[{time.perf_counter() - started:.1f} s wall]")
    shutil.rmtree(out / "thumbnails", ignore_errors=True)
    (out / "report.html").unlink(missing_ok=True)
    print(f"{count} images, workers {workers}, {os.cpu_count()} CPUs")
    for label in ("cold (no thumbnails yet)", "warm (thumbnails cached)"):
        started = time.perf_counter()
        proc = cli("report", str(out), "-j", str(workers))
        print(f"clusterimg report, {label}: {time.perf_counter() - started:.1f} s wall; {proc.stdout.strip()}")
    size = (out / "report.html").stat().st_size
    thumbs = list((out / "thumbnails").glob("*.jpg"))
    print(f"report.html {size / 1e6:.2f} MB, {len(thumbs)} thumbnails, "
          f"{sum(t.stat().st_size for t in thumbs) / 1e6:.1f} MB")


# -- round trip and kills -------------------------------------------------------------


def snapshot(*folders: Path) -> dict[str, str]:
    found = {}
    for folder in folders:
        if folder.exists():
            for p in folder.rglob("*"):
                if p.is_file():
                    found[str(p)] = hashlib.md5(p.read_bytes()).hexdigest()
    return found


def trash_count(trash: Path) -> int:
    try:
        return sum(1 for e in os.scandir(trash) if e.is_file())
    except FileNotFoundError:
        return 0


def roundtrip(dest: Path, kills: int, seed: int, method: str) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    images, out = dest / "images", dest / "out"
    shutil.copytree(BENCH / "dev" / "images", images)
    print(cli("run", str(images), "--method", method, "--transfer", "none", "--out", str(out), "-j", "2",
              "--no-cache").stdout.strip())
    trash = out / "duplicates"
    before = snapshot(images)
    print(f"{len(before)} files in the copy of dev/images")

    started = time.perf_counter()
    print(cli("dedupe", str(out)).stdout.strip(), f"[{time.perf_counter() - started:.1f} s]")
    moved = trash_count(trash)
    after = snapshot(images, trash)
    print(f"after dedupe: {len(snapshot(images))} files in images, {moved} in the trash; md5 multiset identical: "
          f"{Counter(after.values()) == Counter(before.values())}")
    print(cli("undo", str(out)).stdout.strip())
    print(f"after undo: same paths and md5s: {snapshot(images) == before}; trash gone: {not trash.exists()}")

    rng = random.Random(seed)
    for k in range(kills):
        target = rng.randint(1, moved - 1)
        proc = subprocess.Popen([sys.executable, "-m", "clusterimg", "dedupe", str(out), "-q"], env=ENV)
        while proc.poll() is None and trash_count(trash) < target:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = trash_count(trash)
        state = snapshot(images, trash)
        lost = Counter(before.values()) - Counter(state.values())
        rerun = cli("dedupe", str(out), "-q")
        final = snapshot(images, trash)
        exact = Counter(final.values()) == Counter(before.values())
        undone = cli("undo", str(out), "-q")
        back = snapshot(images) == before
        print(f"kill {k + 1}: aimed at {target} moved, killed with {at_kill}/{moved} in the trash "
              f"(exit {proc.returncode}); lost at kill: {sum(lost.values())}; re-run exit {rerun.returncode}, "
              f"{trash_count(trash) if trash.exists() else 0} left in trash after undo; after re-run md5 multiset "
              f"identical: {exact}; after undo every path and md5 back: {back} (undo exit {undone.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("browse")
    b.add_argument("out", type=Path)
    b.add_argument("--shots", type=Path, default=Path("/tmp/report_shots"))
    t = sub.add_parser("build-time")
    t.add_argument("dest", type=Path)
    t.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    r = sub.add_parser("roundtrip")
    r.add_argument("dest", type=Path)
    r.add_argument("--kills", type=int, default=5)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--method", default="phash")
    args = ap.parse_args()
    if args.what == "browse":
        browse(args.out, args.shots)
    elif args.what == "build-time":
        build_time(args.dest, args.workers)
    else:
        roundtrip(args.dest, args.kills, args.seed, args.method)


if __name__ == "__main__":
    main()
