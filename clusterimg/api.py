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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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
from clusterimg.result import Cluster, Result, Root

DEFAULT_METHOD = "phash"
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


def resolve_inputs(inputs) -> list[Root]:
    """The input folders as roots; ClusterimgError (exit 2) for a missing,
    unreadable or mixed input. A list of image files becomes one root (their
    common folder) restricted to those files."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
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


def find_images(roots: Sequence[Root], *, recursive: bool = True, exclude: Path | None = None
                ) -> tuple[list[str], list[Skipped]]:
    """Image paths of all roots (prefixed by their labels) and the files passed over."""
    paths: list[str] = []
    skipped: list[Skipped] = []
    for root in roots:
        if root.files is not None:
            found, passed = root.files, []
        else:
            found, passed = discover(root.path, recursive=recursive, exclude=exclude)
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
    method.prepare(files)
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


def cache_for(method: Method, cache: bool | str | os.PathLike):
    """A context giving the Cache (``True``: the user cache folder; a path:
    that folder) or None (``False``)."""
    if cache is False or cache is None:
        return contextlib.nullcontext(None)
    return open_cache(method, None if cache is True else Path(cache))


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
    exclude: str | os.PathLike | None = None,
    progress=None,
    keep_features: bool = False,
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
    (the user cache folder), a folder, or False. ``exclude``: a folder to
    leave out. ``progress``: True for progress bars on stderr, or a bar
    factory (see :mod:`clusterimg.progress`). ``keep_features``: keep each
    image's feature in ``result.features`` (path -> feature), e.g. to fit a
    model that assigns new images later.

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
    roots = resolve_inputs(inputs)
    bars = bars_for(progress)
    started = time.perf_counter()
    paths, skipped = find_images(roots, recursive=recursive, exclude=Path(exclude) if exclude else None)
    timings = {"discover": time.perf_counter() - started}
    source = Result([], [], [], 0, roots=roots).source
    with cache_for(backend, cache) as store:
        t = time.perf_counter()
        images = read_images(backend, paths, source, workers=workers or os.cpu_count() or 1, cache=store,
                             bar=bars("reading images"))
        timings["extract"] = time.perf_counter() - t
        t = time.perf_counter()
        used = backend.default_threshold if threshold is None else float(threshold)
        with PairScorer(backend, images.files, store, features=images.features,
                        workers=workers or os.cpu_count() or 1) as scorer:
            groups = model.cluster(backend, images.features, scorer, threshold=used, batch_size=batch_size,
                                   exhaustive=exhaustive, bars=bars)
        timings["cluster"] = time.perf_counter() - t
    clusters, outliers = name_groups(groups, images.paths)
    graph = model.name == "graph"
    return Result(
        clusters=clusters,
        outliers=outliers,
        skipped=sorted(skipped + images.skipped, key=lambda s: s.path),
        images=len(images.paths),
        seconds=time.perf_counter() - started,
        method=method,
        threshold=used if graph else None,
        params=dict(backend.params, batch_size=batch_size, exhaustive=exhaustive),
        clustering={} if graph and not groups.info else dict(model=model.name, **model.params, **groups.info),
        roots=roots,
        input_arg=_input_arg(inputs),
        timings=timings,
        counts=dict(images.counts, pairs_scored=scorer.computed, pairs_reused=scorer.reused),
        features=dict(zip(images.paths, images.features)) if keep_features else None,
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
