"""The one entry point: cluster images with given options and return a Result.

The command line, the threshold advice, the report and Python users all call
:func:`cluster` (or the steps it is made of). It checks its inputs once,
before any long work, wires the feature backend, the cache, the worker pool
and the clustering model, and returns a :class:`~clusterimg.result.Result`.
It never prints and writes nothing but the cache; progress goes through the
optional ``progress`` bar factory.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clusterimg.cache import Cache, open_cache
from clusterimg.clustering import available_clusterers, get_clusterer
from clusterimg.clustering.base import Clusterer, Groups
from clusterimg.clustering.threshold import order_clusters
from clusterimg.engine.extract import extract_features
from clusterimg.engine.scoring import PairScorer
from clusterimg.errors import ClusterimgError
from clusterimg.features import available, get_method
from clusterimg.features.base import Feature, Method
from clusterimg.images import Skipped, discover
from clusterimg.options import flag_of
from clusterimg.progress import no_bar, tqdm_bars
from clusterimg.result import Cluster, Result, Root, is_reference, source_of

DEFAULT_METHOD = "orb"
DEFAULT_BATCH_SIZE = 1000
# The clustering model used when none is named, by the backend's kind.
DEFAULT_CLUSTER = {"pairs": "graph", "vector": "auto"}


# -- options -----------------------------------------------------------------------


def split_options(method: str, cluster: str | None, options: dict[str, Any]) -> tuple[dict, dict]:
    """(backend options, clustering-model options) from one flat dict of
    options. Options left at None are dropped; one that neither the backend
    nor the model takes is a ValueError naming the flag."""
    backends, models = available(), available_clusterers()
    if method not in backends:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(backends)})")
    model = cluster or DEFAULT_CLUSTER[backends[method].kind]
    if model not in models:
        raise ValueError(f"unknown clustering model {model!r} (choose from {', '.join(models)})")
    own_backend = {o.name for o in backends[method].options}
    own_model = {o.name for o in models[model].options}
    backend_opts, model_opts, wrong = {}, {}, []
    for name, value in options.items():
        if value is None:
            continue
        if name in own_backend:
            backend_opts[name] = value
        elif name in own_model:
            model_opts[name] = value
        else:
            wrong.append(name)
    if wrong:
        flags = ", ".join(flag_of(w) for w in sorted(wrong))
        raise ValueError(f"{flags} does not apply to --method {method} with --cluster {model}")
    return backend_opts, model_opts


def configure(method: str = DEFAULT_METHOD, cluster: str | None = None, **options) -> tuple[Method, Clusterer]:
    """The backend and the clustering model for these options (ValueError
    with a user-facing message when they do not fit together)."""
    backend_opts, model_opts = split_options(method, cluster, options)
    backend = get_method(method, **backend_opts)
    model = get_clusterer(cluster or DEFAULT_CLUSTER[backend.kind], **model_opts)
    if model.needs == "vector" and backend.kind != "vector":
        vectors = ", ".join(n for n, c in available().items() if c.kind == "vector")
        raise ValueError(f"--cluster {model.name} needs a method with one vector per image ({vectors}); "
                         f"{method} compares pairs: use --cluster graph")
    return backend, model


# -- inputs ---------------------------------------------------------------------------


def resolve_inputs(inputs, reference: Sequence[str | os.PathLike] = ()) -> list[Root]:
    """The input folders as roots; ClusterimgError (exit 2) for a missing,
    unreadable or mixed input. A list of image files becomes one root (their
    common folder) restricted to those files. ``reference`` folders are
    added as roots marked as references."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if reference:
        roots = resolve_inputs([*items, *reference])
        if any(r.files is not None for r in roots):
            raise ClusterimgError("--reference goes with input folders, not files", exit_code=2)
        marked = {Path(p).resolve() for p in reference}
        for root in roots:
            root.reference = root.path in marked
        return roots
    if not items:
        raise ClusterimgError("no input given", exit_code=2)
    paths = [Path(p) for p in items]
    for p in paths:
        if not p.exists():
            raise ClusterimgError(f"input folder not found: {p}", exit_code=2)
    folders = [p for p in paths if p.is_dir()]
    if folders and len(folders) != len(paths):
        raise ClusterimgError("give input folders or image files, not both", exit_code=2)
    if not folders:
        files = [p.resolve() for p in paths]
        common = Path(os.path.commonpath([str(f.parent) for f in files]))
        return [Root("", common, sorted({f.relative_to(common).as_posix() for f in files}))]
    for folder in folders:
        if not os.access(folder, os.R_OK | os.X_OK):
            raise ClusterimgError(f"input folder cannot be read (permission denied): {folder}", exit_code=2)
    if len(folders) == 1:
        return [Root("", folders[0].resolve())]
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved):
        raise ClusterimgError("the same input folder is given twice", exit_code=2)
    for a in resolved:
        for b in resolved:
            if a != b and b.is_relative_to(a):
                raise ClusterimgError(f"input {b} lies inside input {a}: give one of them", exit_code=2)
    roots, taken = [], set()
    for folder in resolved:
        label, n = folder.name or "root", 1
        while label.casefold() in taken:
            n += 1
            label = f"{folder.name}__{n}"
        taken.add(label.casefold())
        roots.append(Root(label, folder))
    return roots


def find_images(roots: Sequence[Root], *, recursive: bool = True, exclude: Path | None = None,
                exclude_globs: Sequence[str] = ()) -> tuple[list[str], list[Skipped]]:
    """Image paths of all roots (prefixed by their labels) and the files passed over."""
    paths: list[str] = []
    skipped: list[Skipped] = []
    for root in roots:
        if root.files is not None:
            found, passed = root.files, []
        else:
            found, passed = discover(root.path, recursive=recursive, exclude=exclude, exclude_globs=exclude_globs)
        prefix = f"{root.label}/" if root.label else ""
        paths += [prefix + p for p in found]
        skipped += [Skipped(prefix + s.path, s.reason) for s in passed]
    return paths, skipped


# -- reading ---------------------------------------------------------------------------


@dataclass
class Images:
    """The images that could be read, with their features, in input order."""

    paths: list[str]
    files: list[str]  # absolute file names of ``paths``
    features: list[Feature]
    skipped: list[Skipped]
    counts: dict[str, int]


def read_images(method: Method, paths: Sequence[str], source, *, workers: int, cache: Cache | None,
                bar=no_bar("")) -> Images:
    """Decode and extract every path (``source(path)`` gives its file), over
    ``workers`` processes and through the cache; unreadable files become
    ``skipped`` with their reason, and the run goes on."""
    files = [str(source(p)) for p in paths]
    counts: dict[str, int] = {}
    extracted = extract_features(method, files, workers, bar, cache, counts)
    images = Images([], [], [], [], counts)
    for path, file, (feature, reason) in zip(paths, files, extracted):
        if feature is None:
            images.skipped.append(Skipped(path, reason or "unreadable"))
        else:
            images.paths.append(path)
            images.files.append(file)
            images.features.append(feature)
    return images


def cache_for(method: Method, cache: bool | str | os.PathLike, warn=None, max_size: int | str | None = None):
    """A context giving the Cache (``True``: the user cache folder; a path:
    that folder) or None (``False``). ``max_size``: its cap in bytes (None:
    $CLUSTERIMG_CACHE_MAX_SIZE or 2 GB; 0: no cap)."""
    if cache is False or cache is None:
        return contextlib.nullcontext(None)
    if max_size is not None:
        from clusterimg.cache_admin import parse_size
        try:
            max_size = parse_size(max_size)
        except ValueError as e:
            raise ClusterimgError(f"cache max size: {e}", exit_code=2)
    return open_cache(method, None if cache is True else Path(cache), warn=warn or _warn, max_size=max_size)


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def bars_for(progress) -> Any:
    """``progress``: None/False (silent), True (tqdm bars on stderr) or a bar factory."""
    if progress is None or progress is False:
        return no_bar
    if progress is True:
        return tqdm_bars(True)
    return progress


# -- the whole run ---------------------------------------------------------------------------


def cluster(
    inputs,
    method: str = DEFAULT_METHOD,
    threshold: float | None = None,
    *,
    cluster: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    recursive: bool = True,
    workers: int | None = None,
    exhaustive: bool = False,
    cache: bool | str | os.PathLike = True,
    cache_max_size: int | str | None = None,
    exclude: str | os.PathLike | None = None,
    progress=None,
    keep_features: bool = False,
    reference: Sequence[str | os.PathLike] = (),
    exclude_globs: Sequence[str] = (),
    warn=None,
    scheduler=None,
    **options,
) -> Result:
    """Cluster the images of ``inputs`` and return a :class:`Result`.

    ``inputs`` is a folder, several folders (paths then start with each
    folder's name), or a list of image files. ``method`` is the feature
    backend (``clusterimg methods`` lists them), ``threshold`` the similarity
    in [0, 1] at which pairs are joined (default: the backend's calibrated
    one), ``cluster`` the clustering model (default: ``graph`` for the
    near-duplicate backends, ``auto`` for vector ones). Other keyword options
    are the backend's and the model's own (``hash_size=16``, ``k=12``), with
    the same names and defaults as the command line's flags. ``cache``: True
    (the user cache folder), a folder, or False; ``cache_max_size`` its cap in
    bytes or as "2G", "500MB" (least recently used entries are evicted beyond it; default
    $CLUSTERIMG_CACHE_MAX_SIZE or 2 GB, 0 for none). ``exclude``: a folder to
    leave out. ``progress``: True for progress bars on stderr, or a bar
    factory (see :mod:`clusterimg.progress`). ``keep_features``: keep each
    image's feature in ``result.features`` (path -> feature), e.g. to fit a
    model that assigns new images later. ``reference``: folders clustered
    with the inputs whose images are preferred as representatives and are
    never moved (a move copies them) or deduplicated. ``exclude_globs``:
    names or relative paths to leave out (``"*.tmp"``, ``"raw/*"``).
    ``warn``: receives one-line warnings (default: :func:`warnings.warn`).
    ``scheduler``: run the reading and the first stage on a Dask cluster: a
    scheduler address (``"tcp://host:8786"``), ``"local:N"`` (a LocalCluster
    of N worker processes) or a ``distributed.Client`` (see
    :mod:`clusterimg.engine.dask_run`); None: the local process pool.

    >>> import clusterimg
    >>> result = clusterimg.cluster("examples", method="phash", cache=False)
    >>> result.clusters[0].members
    ['castillodeSanMarcos.jpg', 'castillodeSanMarcos_bright.jpg']
    >>> [len(c) for c in result.clusters]
    [2, 2, 2, 2, 2, 2]
    """
    try:
        backend, model = configure(method, cluster, **options)
    except ValueError as e:
        raise ClusterimgError(str(e), exit_code=2)
    if threshold is not None and not (0.0 <= float(threshold) <= 1.0):  # NaN fails this too
        raise ClusterimgError(f"threshold must be a number between 0 and 1, not {threshold}", exit_code=2)
    if batch_size is None or batch_size < 0:
        raise ClusterimgError("batch_size must be 0 (one batch) or more", exit_code=2)
    roots = resolve_inputs(inputs, reference)
    with _engine(scheduler) as engine:  # a scheduler is reached (or refused) before the long work
        return _cluster(roots, engine, backend, model, inputs, method, threshold, batch_size, recursive, workers,
                        exhaustive, cache, cache_max_size, exclude, progress, keep_features, exclude_globs, warn)


def _engine(scheduler):
    if scheduler is None:
        return contextlib.nullcontext(None)
    from clusterimg.engine.dask_run import connect

    return connect(scheduler)


def _cluster(roots, engine, backend, model, inputs, method, threshold, batch_size, recursive, workers, exhaustive,
             cache, cache_max_size, exclude, progress, keep_features, exclude_globs, warn) -> Result:
    bars = bars_for(progress)
    started = time.perf_counter()
    paths, skipped = find_images(roots, recursive=recursive, exclude=Path(exclude) if exclude else None,
                                 exclude_globs=exclude_globs)
    timings = {"discover": time.perf_counter() - started}
    file_of = {p: str(source_of(roots, p)) for p in paths}
    source = file_of.__getitem__
    twin_of = exact_copies(list(file_of.values()))
    unique = [p for k, p in enumerate(paths) if k not in twin_of]  # exact copies are not read twice
    timings["exact"] = time.perf_counter() - started - timings["discover"]
    workers = workers or os.cpu_count() or 1
    # A backend that learns from the folder (the autoencoder) trains here,
    # before the cache opens: its model is part of the feature cache key.
    if cache not in (True, False, None):
        backend.model_dir = Path(cache) / "models"
    backend.prepare([str(source(p)) for p in unique], bars)
    used = backend.default_threshold if threshold is None else float(threshold)
    with cache_for(backend, cache, warn, cache_max_size) as store:
        t = time.perf_counter()
        if engine is not None:  # reading and the first stage as Dask tasks (engine/dask_run.py)
            images, groups, computed, reused = engine.cluster(
                backend, model, unique, [str(source(p)) for p in unique], store, threshold=used,
                batch_size=batch_size, exhaustive=exhaustive, bars=bars,
                want_features=keep_features or any(r.reference for r in roots))
            timings["cluster"] = time.perf_counter() - t  # reading included
        else:
            images = read_images(backend, unique, source, workers=workers, cache=store, bar=bars("reading images"))
            timings["extract"] = time.perf_counter() - t
            t = time.perf_counter()
            with PairScorer(backend, images.files, store, features=images.features, workers=workers) as scorer:
                groups = model.cluster(backend, images.features, scorer, threshold=used, batch_size=batch_size,
                                       exhaustive=exhaustive, bars=bars)
            computed, reused = scorer.computed, scorer.reused
            timings["cluster"] = time.perf_counter() - t
    clusters, outliers = name_groups(groups, images.paths)
    if any(r.reference for r in roots):
        is_ref = functools.partial(is_reference, roots)
        clusters = [prefer_reference(c, is_ref, backend, dict(zip(images.paths, images.features)))
                    for c in clusters]
    copies = {}
    for k, first in twin_of.items():
        copies.setdefault(paths[first], []).append(paths[k])
    clusters, outliers, skipped_copies = add_exact_copies(clusters, outliers, images.skipped, copies)
    graph = model.name == "graph"
    return Result(
        clusters=clusters,
        outliers=outliers,
        skipped=sorted(skipped + images.skipped + skipped_copies, key=lambda s: s.path),
        images=len(images.paths) + len(twin_of) - len(skipped_copies),
        seconds=time.perf_counter() - started,
        method=method,
        threshold=used if graph else None,
        params=dict(backend.params, batch_size=batch_size, exhaustive=exhaustive),
        clustering={} if graph and not groups.info else {"model": model.name, **model.params, **groups.info},
        roots=roots,
        input_arg=_input_arg(inputs),
        timings=timings,
        counts=dict(images.counts, pairs_scored=computed, pairs_reused=reused,
                    exact_copies=len(twin_of) - len(skipped_copies)),
        features=with_copies(dict(zip(images.paths, images.features)), copies) if keep_features else None,
    )


def name_groups(groups: Groups, paths: Sequence[str]) -> tuple[list[Cluster], list[str]]:
    """Clusters with paths, in output order (largest first, ties by first
    path), and the sorted outliers."""
    by_members = {}
    for g in groups.groups:
        names = [paths[k] for k in g.members]
        by_members[tuple(sorted(names))] = Cluster(
            members=sorted(names), representative=paths[g.representative],
            scores={paths[k]: s for k, s in zip(g.members, g.scores)})
    ordered = [by_members[tuple(m)] for m in order_clusters(list(by_members))]
    return ordered, sorted(paths[k] for k in groups.outliers)


def prefer_reference(c: Cluster, is_reference, backend: Method, feature_of: dict) -> Cluster:
    """The cluster with a member of a reference folder as its representative
    (the one most similar to the old representative), scores re-measured."""
    refs = [m for m in c.members if is_reference(m)]
    if not refs or is_reference(c.representative):
        return c
    rep = max(sorted(refs), key=lambda m: c.scores[m])  # ties: the first path
    stacked = backend.stack([feature_of[m] for m in c.members])
    k = c.members.index(rep)
    others = np.arange(len(c.members))
    scores = backend.score(stacked, np.full(len(others), k), others)
    return Cluster(c.members, rep, {m: (1.0 if m == rep else round(float(x), 4))
                                    for m, x in zip(c.members, scores)}, c.exact)


def exact_copies(files: Sequence[str]) -> dict[int, int]:
    """{k: first}: file ``k`` has the same bytes as the earlier file ``first``.

    Only files of equal size are read (a hash of their content), so a folder
    without copies costs one stat per file.
    """
    by_size: dict[int, list[int]] = {}
    for k, file in enumerate(files):
        try:
            size = os.stat(file).st_size
        except OSError:
            continue  # it will be reported when it is read
        if size:
            by_size.setdefault(size, []).append(k)
    hashed = [k for same_size in by_size.values() if len(same_size) > 1 for k in same_size]
    digests: dict[int, bytes | None] = {}
    if hashed:  # most folders: no two files of one size, no thread to start
        # Reading and hashing release the GIL: two threads read two files at once.
        with ThreadPoolExecutor(2) as pool:
            digests = dict(zip(hashed, pool.map(_content_digest, [files[k] for k in hashed])))
    twin_of: dict[int, int] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        first_with: dict[bytes, int] = {}
        for k in same_size:
            digest = digests[k]
            if digest is None:
                continue
            if digest in first_with:
                twin_of[k] = first_with[digest]
            else:
                first_with[digest] = k
    return twin_of


def _content_digest(file: str) -> bytes | None:
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.digest()


def with_copies(features: dict[str, Feature], copies: dict[str, list[str]]) -> dict[str, Feature]:
    """``features`` with each exact copy given its original's feature (a
    copy is not read twice, but it is a member like any other)."""
    for original, twins in copies.items():
        if original in features:
            features.update((twin, features[original]) for twin in twins)
    return features


def add_exact_copies(clusters: list[Cluster], outliers: list[str], skipped: list[Skipped],
                     copies: dict[str, list[str]]) -> tuple[list[Cluster], list[str], list[Skipped]]:
    """Put each exact copy where its original is, with the original's score:
    in its cluster, or with an outlier original in a new cluster of the two.
    Copies of an unreadable original are skipped with its reason."""
    if not copies:
        return clusters, outliers, []
    reasons = {s.path: s.reason for s in skipped}
    skipped_copies = [Skipped(c, reasons[o]) for o, cs in copies.items() if o in reasons for c in cs]
    placed = []
    for c in clusters:
        extra = [x for m in c.members for x in copies.get(m, [])]
        if extra:
            exact = set(c.exact) | {m for m in c.members if m in copies} | set(extra)
            scores = dict(c.scores, **{x: c.scores[m] for m in c.members for x in copies.get(m, [])})
            c = Cluster(sorted(c.members + extra), c.representative, scores, sorted(exact))
        placed.append(c)
    alone = []
    for o in outliers:
        if o in copies:
            members = sorted([o, *copies[o]])
            placed.append(Cluster(members, o, {m: 1.0 for m in members}, members))
        else:
            alone.append(o)
    by_members = {tuple(c.members): c for c in placed}
    ordered = [by_members[tuple(m)] for m in order_clusters(list(by_members))]
    return ordered, alone, skipped_copies


def _input_arg(inputs) -> Any:
    if isinstance(inputs, (str, os.PathLike)):
        return str(inputs)
    return [str(p) for p in inputs]


def methods() -> dict[str, type[Method]]:
    """The feature backends: name -> class (``summary``, ``options``, ``default_threshold``)."""
    return available()


def clustering_models() -> dict[str, type[Clusterer]]:
    """The clustering models: name -> class (``summary``, ``options``, ``needs``)."""
    return available_clusterers()
