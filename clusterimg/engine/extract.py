"""Feature extraction over worker processes, cache-aware, in input order."""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from clusterimg.cache import Cache, file_key
from clusterimg.errors import ImageReadError
from clusterimg.features.base import Feature, Method
from clusterimg.progress import no_bar

# Below this many images a process pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 64


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


def extract_one(method: Method, path: str) -> tuple[Feature | None, str | None]:
    """(feature, None) or (None, one-line reason): one bad file never stops a folder."""
    try:
        return method.feature(path), None
    except ImageReadError as e:
        return None, str(e)
    except MemoryError:
        return None, "out of memory while reading this image"
    except Exception as e:  # a backend failing on one odd image must not end the run
        return None, f"feature extraction failed: {type(e).__name__}: {e}"


def _extract_in_worker(path: str):
    return extract_one(_worker_method, path)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool now: drop queued work and terminate the workers rather than
    wait for their current images (they ignore SIGINT)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.terminate()
        except Exception:  # already gone
            pass


def _extract_iter(method: Method, files: Sequence[str], workers: int):
    """Yield (feature, reason) for ``files`` in order, over ``workers`` processes."""
    if workers <= 1 or len(files) < MIN_IMAGES_FOR_POOL:
        for path in files:
            yield extract_one(method, path)
        return
    chunksize = max(1, min(32, len(files) // (workers * 8)))
    # forkserver, not fork: forking a process whose threads (OpenCV's, BLAS's)
    # hold locks can leave a worker deadlocked, e.g. when clusterimg runs
    # inside a bigger program.
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(method, os.getpid()))
    try:
        yield from pool.map(_extract_in_worker, files, chunksize=chunksize)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


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
        for k, item in zip(todo, _extract_iter(method, [files[k] for k in todo], workers)):
            results[k] = item
            if cache is not None and item[0] is not None:
                cache.put_feature(keys[k], item[0])
            shown.update(1)
    return results
