"""Feature extraction over worker processes, cache-aware, in input order."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Sequence

from clusterimg.cache import Cache, file_key
from clusterimg.errors import ClusterimgError, ImageReadError
from clusterimg.features.base import Feature, Method
from clusterimg.progress import no_bar

# Below this many images a process pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 64
# Files a worker reads per task: large enough to batch a model and to cut
# the pool's per-task overhead, small enough for steady progress.
CHUNK = 32


_worker_method: Method | None = None


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when process ``parent_pid`` ends, even by kill -9.

    Two guards: on Linux, PR_SET_PDEATHSIG kills this process when its own
    parent (the forkserver) dies; and a watchdog thread waits on
    ``parent_pid`` (the process that runs clusterimg) and exits when it is
    gone, so workers never outlive a killed run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if not _alive(parent_pid):
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="clusterimg-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)  # Linux 5.3+: readable once the process ended, no PID reuse
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    while _alive(pid):
        time.sleep(1.0)
    os._exit(1)


def _init_worker(method: Method, parent_pid: int | None = None) -> None:
    global _worker_method
    _worker_method = method
    if parent_pid is not None:
        die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: workers ignore it and the parent
    # stops them, so the user sees one message and no worker tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)  # one process per core already; nested threads only fight


def extract_chunk(method: Method, paths: Sequence[str]) -> list[tuple[Feature | None, str | None]]:
    """Features of several files: each decoded on its own (a bad file gets its
    reason), the decoded ones extracted together (a backend may batch them,
    e.g. one model call); if that fails, one by one, so the failure is pinned
    on the image that caused it."""
    results: list[tuple[Feature | None, str | None]] = [(None, None)] * len(paths)
    decoded, where = [], []
    for k, path in enumerate(paths):
        try:
            decoded.append(method.decode(path))
            where.append(k)
        except ImageReadError as e:
            results[k] = (None, str(e))
        except MemoryError:
            results[k] = (None, "out of memory while reading this image")
        except Exception as e:
            results[k] = (None, f"cannot decode image: {type(e).__name__}: {e}")
    try:
        features = method.extract_many(decoded) if decoded else []
        if len(features) != len(decoded):
            raise RuntimeError("extract_many returned the wrong number of features")
    except Exception:
        features = None
    for n, k in enumerate(where):
        if features is not None:
            results[k] = (features[n], None)
            continue
        try:
            results[k] = (method.extract(decoded[n]), None)
        except MemoryError:
            results[k] = (None, "out of memory while reading this image")
        except Exception as e:
            results[k] = (None, f"feature extraction failed: {type(e).__name__}: {e}")
    return results


def _extract_chunk_in_worker(paths: Sequence[str]):
    return extract_chunk(_worker_method, paths)


@contextlib.contextmanager
def _main_module_hidden(method: Method):
    """Start worker processes without them re-running the caller's main module.

    Forkserver and spawn workers import ``__main__`` again from its file;
    that fails for code piped to ``python -`` or typed in a notebook, and a
    script without ``if __name__ == "__main__"`` would start the run again in
    every worker. The workers need nothing from ``__main__`` (the work lives
    in clusterimg's modules), so it is swapped for an empty module while they
    start, unless the backend itself was defined there.
    """
    main = sys.modules.get("__main__")
    if main is None or type(method).__module__ == "__main__":
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _extract_iter(method: Method, files: Sequence[str], workers: int, chunk: int):
    """Yield (feature, reason) for ``files`` in order, over ``workers`` processes."""
    pieces = [files[k : k + chunk] for k in range(0, len(files), chunk)]
    if workers > 1 and len(pieces) > 1 and method.extract_in_threads:
        yield from _extract_in_threads(method, pieces, workers)
        return
    if workers <= 1 or len(files) < MIN_IMAGES_FOR_POOL:
        for piece in pieces:
            yield from extract_chunk(method, piece)
        return
    # forkserver, not fork: forking a process whose threads (OpenCV's, BLAS's)
    # hold locks can leave a worker deadlocked, e.g. when clusterimg runs
    # inside a bigger program.
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(method, os.getpid()))
    try:
        with _main_module_hidden(method):
            # map() submits every chunk now, which starts the workers now, while __main__ is hidden
            results = pool.map(_extract_chunk_in_worker, pieces)
        for piece in results:
            yield from piece
    except BrokenProcessPool as e:
        _stop_workers(pool)
        raise ClusterimgError(f"a worker process died ({e}); try again with --workers 1")
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def _extract_in_threads(method: Method, pieces: Sequence[Sequence[str]], workers: int):
    """``_extract_iter`` over threads of this process, for a backend whose
    per-image work is nearly all in C code that releases the GIL (OpenCV's
    JPEG decoder): no worker processes to start, import and feed."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="clusterimg-extract")
    try:
        for piece in pool.map(partial(extract_chunk, method), pieces):
            yield from piece
    finally:
        # Ctrl-C or a closed generator: drop queued chunks; running ones end within a chunk.
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool now: drop queued work and terminate the workers rather than
    wait for their current images (they ignore SIGINT)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except Exception:  # already gone
            pass


def extract_features(
    method: Method, files: Sequence[str], workers: int, bar=no_bar(""), cache: Cache | None = None,
    counts: dict[str, int] | None = None,
) -> list[tuple[Feature | None, str | None]]:
    """Features of ``files`` (absolute paths), in order, over ``workers`` processes.

    With a cache, stored features of unchanged files are loaded instead, and
    each new one is stored as soon as it arrives, so an interrupted run keeps
    what it had read. ``counts`` (optional) receives features_read / features_reused.
    """
    keys = [file_key(f) for f in files] if cache is not None else [None] * len(files)
    if cache is not None:
        cache.track(files, keys)  # file identities for `cache prune`, last use for eviction
    stored = cache.get_features(keys) if cache is not None else {}
    results: list = [None] * len(files)
    todo = []
    for k, key in enumerate(keys):
        if key is not None and key in stored:
            results[k] = (stored[key], None)
        else:
            todo.append(k)
    if counts is not None:
        counts.update(features_read=len(todo), features_reused=len(files) - len(todo))
    with bar(len(files)) as shown:
        shown.update(len(files) - len(todo))
        chunk = max(1, min(CHUNK, len(todo) // (max(1, workers) * 4)))
        for k, item in zip(todo, _extract_iter(method, [files[k] for k in todo], workers, chunk)):
            results[k] = item
            if cache is not None and item[0] is not None:
                cache.put_feature(keys[k], item[0])
            shown.update(1)
    return results
