"""A run's first stage on a Dask cluster (dask.distributed), its merge on the client.

``clusterimg run DIR --scheduler tcp://host:8786`` (an existing cluster) or
``--scheduler local:4`` (a LocalCluster of 4 worker processes, one thread
each); ``api.cluster(..., scheduler=...)`` also takes a ``distributed.Client``.
Without a scheduler nothing here is imported and the local process pool runs.

What runs where:

- extraction: one task per chunk of files. Only the backend (its options) and
  absolute paths go to the workers, which read the files themselves (a shared
  file system). A chunk's features stay in the worker's memory; the client
  gets each file's skip reason (or, when it needs them: the cache, kept
  features, reference folders, vector models, the features themselves).
- stage 1 (graph model): one task per batch (the same batches as a local
  run): candidate search, scoring, union-find and the representative of
  each group, with :func:`~clusterimg.clustering.threshold.search_batch` and
  :func:`~clusterimg.clustering.threshold.representatives`, the code a local
  run uses. Back come the batch's groups, its pairs, the pair scores it
  computed (for the cache) and the features of the representatives only.
- stage 2 on the client: the merge of the representatives
  (:func:`~clusterimg.clustering.threshold.merge_stage`), then the
  representatives of the clusters that the merge joined, as tasks again
  (they need members' features, which are on the workers).
- vector models cluster all vectors at once, on the client: only the
  extraction runs on the cluster and the vectors come back.

The cache is the client's: features and pair scores that come back are stored
by the client, stored features go to the workers inside the extraction tasks;
no worker opens the SQLite file. The result is the local run's (same batches,
same code, results put back in input order), whatever the number of workers.
Tasks are retried (``RETRIES``) and the scheduler recomputes the results a
killed worker held, so a worker lost mid-run costs time, not the run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from typing import Any, Sequence

import numpy as np

from clusterimg.errors import ClusterimgError

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler
RETRIES = 3  # per task, on top of the scheduler's own rescheduling of tasks lost with a worker
CHUNK = 32  # most files per extraction task (fewer for small runs, as the local pool does)
REPS_PER_TASK = 16  # merged clusters whose representative one task finds
# The workers of a LocalCluster started here: no statistical profiler (it
# samples the stack of the one busy thread every 10 ms), and glibc's malloc
# left alone (Dask's default MALLOC_TRIM_THRESHOLD_ also freezes its mmap
# threshold, so every decoded photo is mapped and zeroed afresh: orb's
# extraction measured 20-40 % slower with it).
LOCAL_CONFIG = {"distributed.worker.profile.enabled": False,
                "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                                                        "OPENBLAS_NUM_THREADS": 1}}


# -- the scheduler option ----------------------------------------------------------------


def parse_scheduler(spec: Any) -> tuple[str, Any]:
    """("local", n) for ``local:N``, ("address", text) for a scheduler
    address, ("client", obj) for a ``distributed.Client``; a one-line
    ClusterimgError (exit 2) for anything else."""
    if hasattr(spec, "submit") and hasattr(spec, "scheduler_info"):
        return "client", spec
    text = str(spec).strip()
    if text.startswith("local:") or text == "local":
        count = text.partition(":")[2] or str(os.cpu_count() or 1)
        if not count.isdigit() or int(count) < 1:
            raise ClusterimgError(f"--scheduler local:N needs a number of workers of 1 or more, not {count!r}",
                                  exit_code=2)
        return "local", int(count)
    scheme, sep, rest = text.partition("://")
    if not sep:  # host:port
        scheme, rest = "tcp", text
    host, colon, port = rest.rpartition(":")
    if not rest or scheme not in ("tcp", "tls", "ws", "wss", "ucx", "inproc") or \
            (colon and not port.isdigit()) or (scheme != "inproc" and not (host if colon else rest)):
        raise ClusterimgError(f"--scheduler: {text!r} is not a scheduler address (tcp://host:port) "
                              "or local:N", exit_code=2)
    return "address", f"{scheme}://{rest}"


def check_scheduler(spec: Any) -> tuple[str, Any]:
    """:func:`parse_scheduler`, and Dask must be installed (exit 2 otherwise):
    what the command line checks before any work."""
    parsed = parse_scheduler(spec)
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterimgError("--scheduler needs Dask: pip install 'clusterimg[dask]' "
                              "(dask and distributed)", exit_code=2)
    return parsed


@contextlib.contextmanager
def connect(spec: Any, timeout: float | None = None):
    """A :class:`DaskEngine` on the scheduler ``spec``; the client (and a
    LocalCluster started here) are closed on exit, a Client passed in is left
    open. Unreachable: ClusterimgError, exit 2."""
    kind, value = check_scheduler(spec)
    if kind == "client":
        yield DaskEngine(value)
        return
    import dask
    import distributed

    cluster = client = None
    try:
        if kind == "local":
            # The workers start with SIGINT ignored (see _quiet_on_interrupt); no
            # warning that the default port of Dask's HTTP server is taken.
            with _sigint_ignored(), warnings.catch_warnings(), dask.config.set(LOCAL_CONFIG):
                warnings.simplefilter("ignore")
                cluster = distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None,
                                                   silence_logs=logging.CRITICAL)
        client = distributed.Client(cluster if cluster is not None else value, timeout=timeout or CONNECT_TIMEOUT,
                                    set_as_default=False)
        if cluster is not None:
            # Ctrl-C reaches the whole process group: our own workers leave it to
            # this process, which cancels the work and stops them (no worker tracebacks).
            client.register_plugin(_quiet_on_interrupt())
    except (KeyboardInterrupt, SystemExit):
        _close(client, cluster)
        raise
    except Exception as e:  # OSError, TimeoutError, ValueError...: one line whatever it is
        _close(client, cluster)
        where = f"a LocalCluster of {value} workers" if kind == "local" else f"the Dask scheduler at {value}"
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClusterimgError(f"cannot reach {where}: {message}", exit_code=2)
    try:
        yield DaskEngine(client)
    finally:
        _close(client, cluster)


@contextlib.contextmanager
def _sigint_ignored():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _close(client, cluster) -> None:
    for thing in (client, cluster):
        if thing is not None:
            with contextlib.suppress(Exception):
                thing.close()


# -- on the workers ---------------------------------------------------------------------


def _quiet_on_interrupt():
    """A worker plugin: the worker process ignores SIGINT (for the workers
    of a LocalCluster, which share the terminal's process group)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreInterrupt(WorkerPlugin):
        name = "clusterimg-ignore-sigint"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupt()

_worker_ready = False


def _on_worker() -> None:
    """Once per worker process: one OpenCV thread (a worker is one thread)."""
    global _worker_ready
    if not _worker_ready:
        with contextlib.suppress(Exception):
            import cv2

            cv2.setNumThreads(1)
        _worker_ready = True


def _extract_task(method, paths: Sequence[str], given: dict[int, Any]) -> list:
    """(feature, reason) per path; ``given``: features the client's cache had."""
    from clusterimg.engine.extract import extract_chunk

    _on_worker()
    todo = [k for k in range(len(paths)) if k not in given]
    fresh = iter(extract_chunk(method, [paths[k] for k in todo]) if todo else [])
    return [(given[k], None) if k in given else next(fresh) for k in range(len(paths))]


def _reasons(chunk: list) -> list:
    """What the client needs of a chunk when the features stay on the workers."""
    return [None if feature is not None else (reason or "unreadable") for feature, reason in chunk]


class _Sparse:
    """Some images' features (or strengths) by global index: ``x[k]`` for an
    int, an array for an array of ints (what representatives() asks)."""

    def __init__(self, values: dict):
        self.values = values

    def __getitem__(self, k):
        if isinstance(k, np.ndarray):
            return np.array([self.values[int(x)] for x in k])
        return self.values[int(k)]


def _gather(locations: Sequence[tuple[int, int]], chunks: Sequence[list]) -> list:
    return [chunks[c][p][0] for c, p in locations]


def _batch_task(method, batch: range, threshold: float, exhaustive: bool, known: dict[int, float],
                keep_scores: bool, locations: Sequence[tuple[int, int]], *chunks) -> dict:
    """Stage 1 on one batch (global indices ``batch``; its features at
    ``locations`` in ``chunks``): pairs, groups, representatives."""
    from clusterimg.clustering.threshold import Edges, UnionFind, representatives, search_batch
    from clusterimg.engine.scoring import PairScorer

    _on_worker()
    features = _gather(locations, chunks)
    scorer = PairScorer(method, [])
    scorer.remember = scorer.remember or keep_scores  # every score of the batch, for the client's cache
    scorer.memo.update(known)  # scores the client's cache had
    i, j, s = search_batch(method, features, batch, threshold, exhaustive, scorer)
    uf = UnionFind(len(batch))
    uf.union_pairs(i - batch.start, j - batch.start)
    groups = [[batch.start + k for k in g] for g in uf.groups()]
    edges = Edges()
    edges.add(i - batch.start, j - batch.start, s)
    strength = edges.strength(len(batch))
    by_index = _Sparse(dict(zip(batch, features)))
    reps = representatives(method, by_index, groups, _Sparse(dict(zip(batch, strength.tolist()))), scorer)
    new = {k: v for k, v in scorer.memo.items() if k not in known} if keep_scores else {}
    return {"i": i, "j": j, "s": s, "groups": groups, "reps": reps,
            "rep_features": [features[g[pos] - batch.start] for g, (pos, _) in zip(groups, reps)],
            "scored": (np.fromiter(new.keys(), np.int64, len(new)), np.fromiter(new.values(), np.float64, len(new))),
            "computed": scorer.computed}


def _reps_task(method, groups: list[list[int]], strength: dict[int, float], known: dict[int, float],
               locations: dict[int, tuple[int, int]], *chunks) -> tuple[list, int]:
    """Representatives of clusters the merge joined (global indices)."""
    from clusterimg.clustering.threshold import representatives
    from clusterimg.engine.scoring import PairScorer

    _on_worker()
    members = sorted(locations)
    features = _Sparse(dict(zip(members, _gather([locations[m] for m in members], chunks))))
    scorer = PairScorer(method, [])
    scorer.remember = True
    scorer.memo.update(known)
    return representatives(method, features, groups, _Sparse(strength), scorer), scorer.computed


# -- on the client -----------------------------------------------------------------------


class DaskEngine:
    """Runs a clustering's extraction and first stage as tasks of ``client``."""

    def __init__(self, client):
        self.client = client
        self.run_id = uuid.uuid4().hex[:12]
        self.futures: list = []

    def workers(self) -> int:
        """Tasks the cluster runs at once now (its worker threads)."""
        with contextlib.suppress(Exception):
            return int(sum(self.client.nthreads().values()))
        return 0

    def _submit(self, fn, *args, name: str):
        future = self.client.submit(fn, *args, key=f"clusterimg-{name}-{self.run_id}", retries=RETRIES, pure=False)
        self.futures.append(future)
        return future

    def _completed(self, futures: Sequence, bar, steps: Sequence[int] | None = None):
        """Yield (position, result) as ``futures`` finish, advancing ``bar``."""
        from distributed import as_completed

        where = {f.key: k for k, f in enumerate(futures)}
        for future in as_completed(futures, loop=self.client.loop):
            k = where[future.key]
            try:
                value = future.result()
            except Exception as e:  # a task that kept failing (e.g. its worker died RETRIES times)
                why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
                raise ClusterimgError(f"a Dask task failed ({why}); do the workers run this clusterimg "
                                      "version and see the images at the same paths?")
            bar.update(1 if steps is None else steps[k])
            yield k, value

    def cancel(self) -> None:
        futures, self.futures = self.futures, []
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)

    def cluster(self, method, model, paths: Sequence[str], files: Sequence[str], cache, *, threshold: float,
                batch_size: int, exhaustive: bool, bars, want_features: bool):
        """(Images, Groups, pairs computed, pairs reused) of ``paths`` (whose
        files are ``files``), as a local run would give them."""
        try:
            return self._cluster(method, model, paths, files, cache, threshold=threshold, batch_size=batch_size,
                                 exhaustive=exhaustive, bars=bars, want_features=want_features)
        finally:  # Ctrl-C, an error or done: nothing of this run stays on the cluster
            self.cancel()

    def _cluster(self, method, model, paths, files, cache, *, threshold, batch_size, exhaustive, bars,
                 want_features):
        from clusterimg.api import Images
        from clusterimg.cache import file_key
        from clusterimg.clustering.base import Group, Groups
        from clusterimg.clustering.threshold import Edges, UnionFind, batch_ranges, merge_stage
        from clusterimg.engine.scoring import PairScorer
        from clusterimg.images import Skipped

        graph = model.name == "graph"
        gather = want_features or cache is not None or not graph
        # -- extraction
        keys = [file_key(f) for f in files] if cache is not None else [None] * len(files)
        if cache is not None:
            cache.track(files, keys)
        stored = cache.get_features(keys) if cache is not None else {}
        n = len(files)
        size = max(1, min(CHUNK, n // (max(1, self.workers()) * 4)))
        pieces = [range(a, min(a + size, n)) for a in range(0, n, size)]
        chunks = [self._submit(_extract_task, method, [files[k] for k in piece],
                               {p: stored[keys[k]] for p, k in enumerate(piece) if keys[k] in stored},
                               name=f"extract-{c}") for c, piece in enumerate(pieces)]
        watched = chunks if gather else [self._submit(_reasons, f, name=f"reasons-{c}") for c, f in enumerate(chunks)]
        reasons: list = [None] * n
        features: list = [None] * n
        with bars("reading images")(n) as shown:
            for c, value in self._completed(watched, shown, [len(p) for p in pieces]):
                for k, item in zip(pieces[c], value):
                    if gather:
                        features[k], reasons[k] = item[0], (None if item[0] is not None else item[1] or "unreadable")
                        if cache is not None and item[0] is not None and keys[k] not in stored:
                            cache.put_feature(keys[k], item[0])
                    else:
                        reasons[k] = item
        images = Images([], [], [], [], {"features_read": n - sum(keys[k] in stored for k in range(n)),
                                         "features_reused": sum(keys[k] in stored for k in range(n))})
        where = []  # (chunk, position) of each readable image
        for k in range(n):
            if reasons[k] is not None:
                images.skipped.append(Skipped(paths[k], reasons[k]))
                continue
            images.paths.append(paths[k])
            images.files.append(files[k])
            where.append((k // size, k % size))
            if gather:
                images.features.append(features[k])
        m = len(images.paths)
        scorer = PairScorer(method, images.files, cache)
        if not graph:  # vector models: the vectors are on the client; cluster them there
            groups = model.cluster(method, images.features, scorer, threshold=threshold, batch_size=batch_size,
                                   exhaustive=exhaustive, bars=bars)
            return images, groups, scorer.computed, scorer.reused

        # -- stage 1: one task per batch
        batches = batch_ranges(m, batch_size)
        keep_scores = scorer.cache is not None
        known = self._known(scorer, m) if keep_scores else {}
        sent = []
        for b, batch in enumerate(batches):
            used = sorted({where[g][0] for g in batch})
            slot = {c: s for s, c in enumerate(used)}
            locations = [(slot[where[g][0]], where[g][1]) for g in batch]
            mine = {key: v for key, v in known.items() if (key >> 32) in batch and (key & 0xFFFFFFFF) in batch}
            sent.append(self._submit(_batch_task, method, batch, threshold, exhaustive, mine, keep_scores, locations,
                                     *[chunks[c] for c in used], name=f"batch-{b}"))
        results: list = [None] * len(batches)
        computed = 0
        with bars(f"pairs ({len(batches)} batches)" if len(batches) > 1 else "pairs")(len(batches)) as shown:
            for b, value in self._completed(sent, shown):
                results[b] = value
                computed += value["computed"]
                gi, s = value["scored"]
                if keep_scores and len(gi):
                    self._store_scores(scorer, gi >> 32, gi & 0xFFFFFFFF, s)
        uf = UnionFind(m)
        edges = Edges()
        own: dict[tuple, tuple] = {}  # a batch's group -> (representative's position, scores)
        reps, rep_batch, rep_features = [], [], []
        for b, value in enumerate(results):
            uf.union_pairs(value["i"], value["j"])
            edges.add(value["i"], value["j"], value["s"])
            for members, rep, feature in zip(value["groups"], value["reps"], value["rep_features"]):
                own[tuple(members)] = rep
                reps.append(members[rep[0]])
                rep_batch.append(b)
                rep_features.append(feature)
        # -- stage 2 on the client
        if len(batches) > 1:
            i, j, s = merge_stage(method, rep_features, reps, rep_batch, threshold, exhaustive, scorer,
                                  bars("pairs (merge stage)"))
            uf.union_pairs(i, j)
            edges.add(i, j, s)
        found = uf.groups()
        clusters = [g for g in found if len(g) > 1]
        merged = [g for g in clusters if tuple(g) not in own]
        strength = edges.strength(m)
        got: dict[tuple, tuple] = {}
        if merged:
            pieces_of = [merged[a:a + REPS_PER_TASK] for a in range(0, len(merged), REPS_PER_TASK)]
            jobs = []
            for t, part in enumerate(pieces_of):
                members = sorted({x for g in part for x in g})
                used = sorted({where[x][0] for x in members})
                slot = {c: s for s, c in enumerate(used)}
                inside = set(members)
                mine = {key: v for key, v in known.items()
                        if (key >> 32) in inside and (key & 0xFFFFFFFF) in inside}
                jobs.append(self._submit(_reps_task, method, part, {x: float(strength[x]) for x in members}, mine,
                                         {x: (slot[where[x][0]], where[x][1]) for x in members},
                                         *[chunks[c] for c in used], name=f"reps-{t}"))
            with bars("representatives")(len(jobs)) as shown:
                for t, (value, count) in self._completed(jobs, shown):
                    computed += count
                    got.update(zip(map(tuple, pieces_of[t]), value))
        groups = Groups([], [g[0] for g in found if len(g) == 1])
        for g in clusters:
            pos, scores = own.get(tuple(g)) or got[tuple(g)]
            groups.groups.append(Group(g, g[pos], [round(float(x), 4) for x in scores]))
        return images, groups, computed + scorer.computed, scorer.reused

    @staticmethod
    def _known(scorer, m: int) -> dict[int, float]:
        """The client's cached scores of pairs of this run, by global pair (a << 32 | b, a < b)."""
        index = {key: g for g, key in enumerate(scorer.keys) if key is not None}
        known = {}
        for (ka, kb), value in scorer.known.items():
            a, b = index.get(ka), index.get(kb)
            if a is not None and b is not None:
                a, b = min(a, b), max(a, b)
                known[(a << 32) | b] = value
        return known

    @staticmethod
    def _store_scores(scorer, gi: np.ndarray, gj: np.ndarray, s: np.ndarray) -> None:
        keys = scorer.keys
        rows = [(keys[a], keys[b], float(v)) for a, b, v in zip(gi.tolist(), gj.tolist(), s.tolist())
                if keys[a] is not None and keys[b] is not None]
        if rows:
            scorer.cache.put_scores([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
