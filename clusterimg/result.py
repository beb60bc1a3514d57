"""What a clustering returns: clusters with members, scores and
representative; outliers; skipped files with reasons; the options used.

A :class:`Result` is plain data. It becomes the ``clusters.json`` manifest
(:meth:`Result.manifest`, :meth:`Result.to_json`) or a folder tree
(:meth:`Result.write`); nothing is written until one of those is called.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterimg.images import Skipped


@dataclass
class Cluster:
    """One cluster: ``members`` (paths relative to the input, sorted), the
    ``representative`` (the member most typical of the cluster), each
    member's similarity to it in ``scores``, and in ``exact`` the members
    that are byte-identical copies of another member (found before any
    backend runs; a copy scores what its original scores)."""

    members: list[str]
    representative: str
    scores: dict[str, float]
    exact: list[str] = field(default_factory=list)  # members byte-identical to another member

    def __len__(self) -> int:
        return len(self.members)


@dataclass
class Root:
    """An input folder. With several inputs each has a ``label`` (its folder
    name, made unique) that prefixes its paths; a single input has none."""

    label: str
    path: Path  # absolute
    files: list[str] | None = None  # only these files (relative), or None: every image found
    reference: bool = False  # a --reference folder: never moved or deduplicated, preferred as representative

    def source(self, rel: str) -> Path:
        return self.path / rel


def source_of(roots: list[Root], path: str) -> Path:
    """The file behind a path: relative to the one unlabelled root, or
    ``label/rest`` with several."""
    if len(roots) == 1 and not roots[0].label:
        return roots[0].source(path)
    label, _, rel = path.partition("/")
    for root in roots:
        if root.label == label:
            return root.source(rel)
    raise KeyError(path)


def is_reference(roots: list[Root], path: str) -> bool:
    """Whether ``path`` lies in a reference folder."""
    label = path.partition("/")[0]
    return any(r.reference and r.label == label for r in roots)


@dataclass
class Result:
    """The clusters of one run. ``clusters`` are in output order (largest
    first, ties by first path); ``outliers`` matched nothing; ``skipped``
    files could not be read, each with a one-line reason."""

    clusters: list[Cluster]
    outliers: list[str]
    skipped: list[Skipped]
    images: int  # images read and compared
    seconds: float = 0.0
    method: str = ""
    threshold: float | None = None
    params: dict[str, Any] = field(default_factory=dict)  # backend options, batch size, ...
    clustering: dict[str, Any] = field(default_factory=dict)  # model, its parameters, selection
    roots: list[Root] = field(default_factory=list)
    input_arg: Any = None  # the input(s) as given, for the manifest
    timings: dict[str, float] = field(default_factory=dict)
    # work done vs taken from the cache: features_read / _reused, pairs_scored / _reused
    counts: dict[str, int] = field(default_factory=dict)
    features: dict[str, Any] | None = None  # path -> feature, with cluster(..., keep_features=True)

    def source(self, path: str) -> Path:
        """The file behind a path of this result (a member, outlier or skipped path)."""
        return source_of(self.roots, path)

    def is_reference(self, path: str) -> bool:
        """Whether ``path`` lies in a reference folder."""
        return is_reference(self.roots, path)

    def manifest(self, transfer: str = "none") -> dict[str, Any]:
        """The clusters.json object (outputs planned for ``transfer``; null with "none")."""
        from clusterimg.output import build_manifest

        return build_manifest(self, transfer=transfer)

    def to_json(self, indent: int | None = 1) -> str:
        """The manifest of a run that writes no files, as JSON text."""
        return json.dumps(self.manifest(), indent=indent, ensure_ascii=False, allow_nan=False)

    def write(self, out: str | Path, transfer: str = "copy", *, overwrite: bool = False, progress=None,
              warn=None) -> dict[str, Any]:
        """Write the folder tree (``transfer``: copy, move, symlink, hardlink,
        or none for the manifest alone) and ``out/clusters.json``; returns the
        manifest. An existing non-empty ``out`` is refused unless
        ``overwrite`` (which replaces only an earlier clusterimg output)."""
        from clusterimg.output import TRANSFERS, prepare_out_dir, write_output
        from clusterimg.progress import no_bar

        if transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}")
        out = Path(out)
        prepare_out_dir(out, overwrite)
        manifest = self.manifest(transfer)
        write_output(out, manifest, (progress or no_bar)(transfer), warn or (lambda msg: None))
        return manifest

    def report(self, out: str | Path, *, workers: int = 1, progress=None) -> Path:
        """Write ``out/report.html`` (thumbnails, pages, filter, keep/remove
        ticks); writes the manifest first (``transfer="none"``) when ``out``
        has none yet. Returns the page's path."""
        from clusterimg.output import MANIFEST
        from clusterimg.progress import no_bar
        from clusterimg.report import build_report

        out = Path(out)
        manifest = None if (out / MANIFEST).is_file() else self.write(out, transfer="none")
        return build_report(out, manifest, workers=workers, bars=progress or no_bar)
