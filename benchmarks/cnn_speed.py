"""Embedding speed of the cnn backend: images/s including decode, and the
peak memory of the whole process tree.

    python3 ../shared/bench/make_neardup.py ../shared/bench/photos /tmp/cnn_bench640 \\
        --groups 130 --singletons 11 --variants 15 --seed 1 --max-side 640
    python benchmarks/cnn_speed.py /tmp/cnn_bench640/images --images 2000 --workers 2

Modes (``--mode``, default both):
- ``chunks``: what the engine's chunked extraction does: each worker process
  decodes a chunk of files, then embeds it with one batched model call
  (``extract_many``), 1 onnxruntime thread per worker;
- ``engine``: ``clusterimg.engine.extract.extract_features`` as it is in
  this checkout (whatever it calls per file or per chunk).
Also the model alone (no decode) in one process, at 1 and ``--workers`` threads.

Timings include starting the worker processes and loading the model in each
(the model file is built, if needed, before the clock starts). Peak memory
is sampled every 50 ms as the sum of the resident sizes of this process and
its children (psutil), and so is their CPU time: on a busy machine the
wall-clock rate says little, the CPU time per image (and the rate it implies
on free cores) still does.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from clusterimg.engine.extract import extract_features
from clusterimg.errors import ImageReadError
from clusterimg.features import get_method
from clusterimg.images import discover


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds (user + system) used since it started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        """CPU time the process tree used while sampled (this process counted
        from the start of the sampling)."""
        return sum(v - self.cpu0.get(pid, 0.0) for pid, v in self.cpu.items())

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self._sample()
        self.cpu0 = dict(self.cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


_method = None


def _init(method):
    global _method
    _method = method
    import cv2

    cv2.setNumThreads(1)


def _chunk(paths):
    images, failed = [], 0
    for p in paths:
        try:
            images.append(_method.decode(p))
        except ImageReadError:
            failed += 1
    return len(_method.extract_many(images)), failed


def run_chunks(method, files, workers: int, chunk: int) -> int:
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(method,)) as pool:
        return sum(n for n, _ in pool.map(_chunk, chunks))


def model_alone(method, threads: int, n: int = 256, batch: int = 32) -> float:
    from clusterimg.nn.efficientnet import Embedder

    emb = Embedder.default(threads=threads)
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, emb.input_size, emb.input_size)).astype(np.float32)
    emb.embed(x)  # warm-up
    t = time.perf_counter()
    for _ in range(n // batch):
        emb.embed(x)
    return (n // batch) * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=32, help="files per worker task (chunks mode)")
    ap.add_argument("--mode", choices=["chunks", "engine", "both"], default="both")
    args = ap.parse_args()

    files = [str(args.folder / f) for f in discover(args.folder)[0][: args.images]]
    method = get_method("cnn")  # builds the .onnx into the cache folder if needed
    sizes = []
    for f in files[:50]:
        from PIL import Image

        with Image.open(f) as im:
            sizes.append(max(im.size))
    print(f"{len(files)} images from {args.folder} (longest side median {int(np.median(sizes))} px of the "
          f"first 50); {args.workers} workers; {os.cpu_count()} CPUs visible, "
          f"{len(os.sched_getaffinity(0))} usable; load average {os.getloadavg()[0]:.1f}")
    for threads in sorted({1, args.workers}):
        print(f"model alone (no decode), batch 32, {threads} thread(s): {model_alone(method, threads):.0f} images/s")

    if args.mode in ("chunks", "both"):
        with PeakMemory() as mem:
            t = time.perf_counter()
            done = run_chunks(method, files, args.workers, args.chunk)
            seconds = time.perf_counter() - t
        print(f"chunks: decode + extract_many, {args.workers} workers x 1 thread, chunk {args.chunk}: "
              f"{done} images in {seconds:.1f} s = {done / seconds:.1f} images/s; "
              f"peak memory (process tree) {mem.peak / 2**20:.0f} MiB; {cpu_line(mem, done, args.workers)}")
    if args.mode in ("engine", "both"):
        with PeakMemory() as mem:
            t = time.perf_counter()
            results = extract_features(method, files, args.workers)
            seconds = time.perf_counter() - t
        done = sum(r[0] is not None for r in results)
        print(f"engine: extract_features as in this checkout, {args.workers} workers: {done} images in "
              f"{seconds:.1f} s = {done / seconds:.1f} images/s; peak memory (process tree) "
              f"{mem.peak / 2**20:.0f} MiB; {cpu_line(mem, done, args.workers)}")


def cpu_line(mem: PeakMemory, done: int, workers: int) -> str:
    """CPU time of the process tree: what the run costs whatever else the
    machine is doing, and the rate it gives when the cores are free for it."""
    cpu = mem.cpu_seconds()
    return (f"CPU time {cpu:.1f} s = {1000 * cpu / max(done, 1):.1f} ms per image "
            f"(-> {workers * done / max(cpu, 1e-9):.0f} images/s on {workers} free cores)")


if __name__ == "__main__":
    main()
