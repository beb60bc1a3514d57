"""A saved cluster model: fit once, label the clusters, assign new images.

``fit`` clusters a training folder (any backend, any clustering model) and
keeps what is needed to place a new image later: each cluster's members,
their features, the representative and the rule that assigns an image.
A person then attaches labels to the clusters (``set_labels``, or
``labels_from_folders`` on a reviewed folder tree), and ``assign`` gives any
new image a cluster (-1: none) and that cluster's labels.

Assignment rules (chosen from how the model was fitted):

- ``threshold`` (the ``graph`` model, any backend): the image is scored
  against every member of every cluster with the backend's own pair score;
  the cluster of the best-scoring member wins if that score is at least the
  run's threshold. For the near-duplicate backends this is a query-image
  search: "which cluster holds a copy of this photo?".
- ``centroid`` (vector backends with a vector clustering model): the nearest
  cluster centroid by cosine, accepted if the image lies within that
  cluster's radius: the ``radius_quantile`` (default 0.95) quantile of its
  members' cosine distances to the centroid, times ``radius_slack``.
- ``dbscan`` (vector backends clustered with DBSCAN): the cluster of the
  nearest core point, accepted within ``eps`` (cosine distance), which is
  DBSCAN's own rule for border points; distances are measured after the
  PCA projection DBSCAN clustered in (kept in the model file).

For the vector rules an image whose vector matches a training image's
(cosine similarity >= 1 - 1e-6) gets that image's cluster (-1 for a
training outlier), so assigning the training set gives back the fit.
Ties go to the lowest cluster id; assignment is deterministic.

The file format (``.cim``, documented in the README): a zip archive of
exactly two members, no pickle and no code:

- ``model.json``: ``format`` ("clusterimg-model"), ``format_version``,
  ``clusterimg`` (version that wrote it), ``method``, ``params`` (backend
  options), ``feature_version``, ``kind``, ``threshold``, ``clustering``,
  ``rule`` (``{"name": ..., parameters}``), ``clusters`` (``id``,
  ``members``, ``representative``, ``digests`` (sha256 of each member file),
  ``radius``), ``outliers``, ``labels`` (``{"id": [strings]}``);
- ``features.npz`` (``allow_pickle=False``): vector backends: ``vectors``
  (n, d) float32 of all members then outliers, in the order of the
  clusters' ``members`` lists, ``centroids`` (clusters, d), ``core`` (n,
  bool), ``pca_mean`` (d,) and ``pca_components`` (p, d) for dbscan's
  projection; pair backends: ``f{n}``, one member's feature as the bytes of its
  own npz (the cache's encoding: an array, or a dict of arrays).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from clusterimg import __version__
from clusterimg.atomic import atomic_file
from clusterimg.errors import ClusterimgError, read_json_file
from clusterimg.features import get_method
from clusterimg.features.base import Feature, Method

FORMAT = "clusterimg-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
FEATURES_NPZ = "features.npz"
# Largest member of a model archive that is read (a zip bomb is refused).
MAX_MEMBER_BYTES = 4 << 30
DEFAULT_RADIUS_QUANTILE = 0.95
DEFAULT_RADIUS_SLACK = 1.0
SAME_IMAGE = 1e-6  # cosine distance under which a vector is a training image's
PAIRS_PER_PIECE = 200_000  # pair scores computed at a time by the threshold rule


@dataclass
class ModelCluster:
    id: int
    members: list[str]
    representative: str
    digests: list[str] = field(default_factory=list)  # sha256 of each member file ("" if unknown)
    radius: float | None = None  # centroid rule: accepted cosine distance


@dataclass
class Assignment:
    path: str  # the path given, or "#k" for the k-th decoded image
    cluster: int  # -1: none
    labels: list[str]
    score: float  # similarity in [0, 1] to what the image was matched against
    error: str | None = None  # the image could not be read (cluster -1)

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "cluster": self.cluster, "labels": list(self.labels), "score": round(self.score, 4)}
        if self.error is not None:
            out["error"] = self.error
        return out


class ClusterModel:
    """A fitted model. Build one with :func:`fit` or :func:`from_result`,
    keep it with :meth:`save` / :func:`load`."""

    def __init__(self, *, method: str, params: dict, feature_version: int, kind: str, threshold: float | None,
                 clustering: dict, rule: dict, clusters: list[ModelCluster], outliers: list[str],
                 features: dict[str, Feature], labels: dict[int, list[str]] | None = None,
                 version: str = __version__):
        self.method_name = method
        self.params = dict(params)
        self.feature_version = feature_version
        self.kind = kind
        self.threshold = threshold
        self.clustering = dict(clustering)
        self.rule = dict(rule)
        self.clusters = clusters
        self.outliers = list(outliers)
        self.features = features  # path -> feature, members and (vector backends) outliers
        self.labels: dict[int, list[str]] = {int(k): list(v) for k, v in (labels or {}).items()}
        self.version = version
        self._backend: Method | None = None
        self._prepared: dict[str, Any] | None = None

    # -- the backend and what assignment needs ready --------------------------------

    @property
    def backend(self) -> Method:
        if self._backend is None:
            try:
                self._backend = get_method(self.method_name, **self.params)
            except ValueError as e:
                raise ClusterimgError(f"model cannot be used: {e}", exit_code=2)
        return self._backend

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.clusters]

    def _member_order(self) -> tuple[list[str], np.ndarray]:
        """Every member path, cluster by cluster, and each one's cluster id."""
        paths, owner = [], []
        for c in self.clusters:
            paths += c.members
            owner += [c.id] * len(c.members)
        return paths, np.asarray(owner, dtype=np.int64)

    def _prepare(self) -> dict[str, Any]:
        if self._prepared is not None:
            return self._prepared
        paths, owner = self._member_order()
        ready: dict[str, Any] = {"owner": owner}
        if self.rule["name"] != "threshold":
            known = paths + self.outliers
            ready["known"] = _normalise(self.backend.vectors([self.features[p] for p in known]))
            ready["known_owner"] = np.concatenate([owner, np.full(len(self.outliers), -1, np.int64)])
            if self.rule["name"] == "centroid":
                ready["centroids"] = np.stack([centroid_of(ready["known"][: len(paths)][owner == c.id]) for c in self.clusters]) \
                    if self.clusters else np.zeros((0, ready["known"].shape[1]), np.float32)
                ready["radius"] = np.array([c.radius for c in self.clusters], dtype=np.float64)
            elif self.rule["name"] == "dbscan":
                core = np.asarray(self.rule.get("core_mask", []), dtype=bool)
                ready["core"] = _in_rule_space(ready["known"][: len(paths)][core], self.rule)
                ready["core_owner"] = owner[core]
        else:
            ready["members"] = [self.features[p] for p in paths]
        self._prepared = ready
        return ready

    # -- assignment -------------------------------------------------------------

    def assign_features(self, features: Sequence[Feature]) -> list[tuple[int, float]]:
        """(cluster id or -1, score) of each feature, in order."""
        if not len(features):
            return []
        ready = self._prepare()
        if self.rule["name"] != "threshold":
            return self._assign_vectors(self.backend.vectors(list(features)), ready)
        return self._assign_pairs(list(features), ready)

    def _assign_pairs(self, features: list[Feature], ready: dict) -> list[tuple[int, float]]:
        members, owner = ready["members"], ready["owner"]
        out = []
        if not members:
            return [(-1, 0.0)] * len(features)
        m = len(members)
        per_piece = max(1, PAIRS_PER_PIECE // m)
        for start in range(0, len(features), per_piece):
            queries = features[start : start + per_piece]
            stacked = self.backend.stack(members + queries)
            q = len(queries)
            i = np.repeat(np.arange(m, m + q, dtype=np.int64), m)
            j = np.tile(np.arange(m, dtype=np.int64), q)
            scores = np.asarray(self.backend.score(stacked, i, j), dtype=np.float64).reshape(q, m)
            for row in scores:
                best = int(np.argmax(row))  # first maximum: the lowest cluster id
                score = float(row[best])
                out.append((int(owner[best]) if score >= self.threshold else -1, score))
        return out

    def _assign_vectors(self, x: np.ndarray, ready: dict) -> list[tuple[int, float]]:
        x = _normalise(x)
        known = ready["known"]
        out = []
        same_sim = known @ x.T if len(known) else np.zeros((0, len(x)))
        if self.rule["name"] == "centroid":
            sims = ready["centroids"] @ x.T if len(ready["centroids"]) else np.zeros((0, len(x)))
        else:
            sims = ready["core"] @ _in_rule_space(x, self.rule).T if len(ready["core"]) else np.zeros((0, len(x)))
        for k in range(len(x)):
            if len(known):
                nearest = int(np.argmax(same_sim[:, k]))
                if 1.0 - same_sim[nearest, k] <= SAME_IMAGE:
                    out.append((int(ready["known_owner"][nearest]), float(np.clip(same_sim[nearest, k], 0, 1))))
                    continue
            if not len(sims):
                out.append((-1, 0.0))
                continue
            best = int(np.argmax(sims[:, k]))
            sim = float(sims[best, k])
            if self.rule["name"] == "centroid":
                cid, limit = self.clusters[best].id, float(ready["radius"][best])
            else:
                cid, limit = int(ready["core_owner"][best]), float(self.rule["eps"])
            out.append((cid if 1.0 - sim <= limit + 1e-12 else -1, float(np.clip(sim, 0.0, 1.0))))
        return out

    def assign(self, items: Iterable, *, workers: int | None = 1) -> list[Assignment]:
        """Assign image files (paths) or images already decoded by the
        backend (numpy arrays, e.g. ``model.backend.decode(file)``), in order.
        A file that cannot be read gets cluster -1 and its ``error``; the
        others are still assigned."""
        items = list(items)
        feats: list[Feature | None] = [None] * len(items)
        errors: list[str | None] = [None] * len(items)
        names = [f"#{k}" if isinstance(it, np.ndarray) else str(it) for k, it in enumerate(items)]
        files = [k for k, it in enumerate(items) if not isinstance(it, np.ndarray)]
        arrays = [k for k, it in enumerate(items) if isinstance(it, np.ndarray)]
        if arrays:
            for k, f in zip(arrays, self.backend.extract_many([items[k] for k in arrays])):
                feats[k] = f
        if files:
            from clusterimg.engine.extract import extract_features

            done = extract_features(self.backend, [str(items[k]) for k in files], max(1, workers or os.cpu_count() or 1))
            for k, (f, reason) in zip(files, done):
                feats[k], errors[k] = f, (None if f is not None else (reason or "unreadable"))
        good = [k for k in range(len(items)) if feats[k] is not None]
        answers = dict(zip(good, self.assign_features([feats[k] for k in good])))
        out = []
        for k in range(len(items)):
            cid, score = answers.get(k, (-1, 0.0))
            labels = [] if errors[k] else list(self.labels.get(cid, []))
            out.append(Assignment(names[k], cid, labels, score, errors[k]))
        return out

    # -- labels -------------------------------------------------------------------

    def set_labels(self, mapping: dict) -> None:
        """Set the labels of the clusters named in ``mapping`` ({id: [labels]}
        or {id: "label"}; ids as ints or strings; -1 labels images assigned
        to no cluster). Others keep theirs; an empty list clears. An unknown
        id or a label that is not text is an error and nothing changes."""
        if not isinstance(mapping, dict):
            raise ClusterimgError("labels must be an object {cluster id: [labels]}", exit_code=2)
        valid = set(self.ids) | {-1}
        update = {}
        for key, value in mapping.items():
            try:
                cid = int(str(key).strip())
            except ValueError:
                raise ClusterimgError(f"label key {key!r} is not a cluster id", exit_code=2)
            if cid not in valid:
                raise ClusterimgError(f"cluster {cid} does not exist in this model (ids 0 to {len(self.clusters) - 1}, "
                                      "and -1 for no cluster)", exit_code=2)
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ClusterimgError(f"labels of cluster {cid} must be a string or a list of strings", exit_code=2)
            update[cid] = [v.strip() for v in values if v.strip()]
        self.labels.update(update)

    def labels_from_folders(self, folder: str | os.PathLike) -> dict[str, int]:
        """Labels from a reviewed folder tree: ``folder/LABEL/...`` holds images
        of clusters that should carry LABEL. Each file is matched to a training
        image by content (sha256), else by file name when exactly one member
        has it; each cluster whose members were found gets the label of the
        folder holding most of them (all tied labels, sorted). Returns counts:
        files, matched, unmatched, clusters labelled."""
        from clusterimg.images import discover

        root = Path(folder)
        if not root.is_dir():
            raise ClusterimgError(f"label folder not found: {root}", exit_code=2)
        by_digest, by_name = {}, {}
        for c in self.clusters:
            for path, digest in zip(c.members, c.digests or [""] * len(c.members)):
                if digest:
                    by_digest.setdefault(digest, c.id)
                by_name.setdefault(Path(path).name, []).append(c.id)
        votes: dict[int, dict[str, int]] = {}
        counts = {"files": 0, "matched": 0, "unmatched": 0, "clusters": 0}
        labels = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for label_dir in labels:
            found, _ = discover(label_dir)
            for rel in found:
                counts["files"] += 1
                file = label_dir / rel
                cid = by_digest.get(file_digest(file))
                if cid is None and len(set(by_name.get(file.name, []))) == 1:
                    cid = by_name[file.name][0]
                if cid is None:
                    counts["unmatched"] += 1
                    continue
                counts["matched"] += 1
                votes.setdefault(cid, {}).setdefault(label_dir.name, 0)
                votes[cid][label_dir.name] += 1
        for cid, tally in sorted(votes.items()):
            top = max(tally.values())
            self.labels[cid] = sorted(name for name, n in tally.items() if n == top)
        counts["clusters"] = len(votes)
        return counts

    def describe(self) -> list[dict[str, Any]]:
        """One row per cluster (and -1 when it has labels): id, size, representative, labels."""
        rows = [{"id": c.id, "size": len(c.members), "representative": c.representative,
                 "labels": self.labels.get(c.id, [])} for c in self.clusters]
        if self.labels.get(-1):
            rows.append({"id": -1, "size": len(self.outliers), "representative": None, "labels": self.labels[-1]})
        return rows

    # -- saving and loading ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        rule = {k: v for k, v in self.rule.items() if k not in ("core_mask", "projection")}
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "clusterimg": self.version,
            "method": self.method_name, "params": self.params, "feature_version": self.feature_version,
            "kind": self.kind, "threshold": self.threshold, "clustering": self.clustering, "rule": rule,
            "clusters": [{"id": c.id, "members": c.members, "representative": c.representative,
                          "digests": c.digests, "radius": c.radius} for c in self.clusters],
            "outliers": self.outliers,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        from clusterimg.cache import encode_feature

        paths, owner = self._member_order()
        if self.kind == "vector":
            arrays = {"vectors": self.backend.vectors([self.features[p] for p in paths + self.outliers])
                      .astype(np.float32)}
            if self.rule["name"] == "centroid":
                ready = self._prepare()
                arrays["centroids"] = np.asarray(ready["centroids"], np.float32)
            if self.rule["name"] == "dbscan":
                arrays["core"] = np.asarray(self.rule["core_mask"], dtype=bool)
                if self.rule.get("projection") is not None:
                    arrays["pca_mean"], arrays["pca_components"] = self.rule["projection"]
            return arrays
        arrays = {}
        for n, p in enumerate(paths):
            data = encode_feature(self.features[p])
            if data is None:
                raise ClusterimgError(f"the {self.method_name} features cannot be saved without pickle")
            arrays[f"f{n}"] = np.frombuffer(data, dtype=np.uint8)
        return arrays

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model file (atomically: a temporary file renamed into
        place). An existing file is refused unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ClusterimgError(f"{path} exists: give another name, or --overwrite to replace it", exit_code=2)
        if path.is_dir():
            raise ClusterimgError(f"{path} is a folder, not a model file", exit_code=2)
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise ClusterimgError(f"folder not found: {folder}", exit_code=2)
        buf = io.BytesIO()
        np.savez(buf, **self._arrays())
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False)
        with atomic_file(path, prefix=".clusterimg-model-") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(_entry(MODEL_JSON), text)
            z.writestr(_entry(FEATURES_NPZ), buf.getvalue())
        return path


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))  # same content -> same bytes
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


# -- building a model ---------------------------------------------------------------


def _in_rule_space(x: np.ndarray, rule: dict) -> np.ndarray:
    """Normalised vectors in the space the rule compares them in (the
    dbscan rule's PCA projection, if any)."""
    from clusterimg.clustering.vector import project

    return _normalise(project(_normalise(x), rule.get("projection")))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def centroid_of(rows: np.ndarray) -> np.ndarray:
    """The normalised mean of L2-normalised rows."""
    return _normalise(np.asarray(rows, np.float64).mean(axis=0, keepdims=True))[0]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes ("" if it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def from_result(result, *, radius_quantile: float = DEFAULT_RADIUS_QUANTILE,
                radius_slack: float = DEFAULT_RADIUS_SLACK) -> ClusterModel:
    """A model from a :class:`~clusterimg.result.Result` made with
    ``keep_features=True``. The rule follows the clustering: ``graph``
    -> threshold; ``dbscan`` on a vector backend -> dbscan; any other model
    on a vector backend -> centroid."""
    if result.features is None:
        raise ClusterimgError("the result has no features: cluster with keep_features=True", exit_code=2)
    if not 0.0 < radius_quantile <= 1.0 or radius_slack <= 0:
        raise ClusterimgError("radius_quantile must be in (0, 1] and radius_slack above 0", exit_code=2)
    try:
        backend = get_method(result.method, **{k: v for k, v in result.params.items()
                                               if k not in ("batch_size", "exhaustive")})
    except ValueError as e:
        raise ClusterimgError(str(e), exit_code=2)
    model_name = (result.clustering or {}).get("model", "graph")
    clusters = []
    for n, c in enumerate(result.clusters):
        digests = []
        for p in c.members:
            try:
                digests.append(file_digest(result.source(p)))
            except KeyError:
                digests.append("")
        clusters.append(ModelCluster(n, list(c.members), c.representative, digests))
    kind = backend.kind
    keep = {p: result.features[p] for c in clusters for p in c.members}
    outliers = list(result.outliers)
    if kind == "vector":
        keep.update({p: result.features[p] for p in outliers if p in result.features})
        outliers = [p for p in outliers if p in result.features]
    if model_name == "graph":
        threshold = result.threshold if result.threshold is not None else backend.default_threshold
        rule = {"name": "threshold", "threshold": float(threshold)}
    elif kind != "vector":
        raise ClusterimgError(f"cannot build a model from a {model_name} clustering of a pair backend", exit_code=2)
    else:
        threshold = None
        vec = {p: v for p, v in zip(keep, _normalise(backend.vectors(list(keep.values()))))}
        if model_name == "dbscan":
            from clusterimg.clustering.models import SEED
            from clusterimg.clustering.vector import fit_projection

            eps = result.clustering.get("eps")
            if eps is None:
                raise ClusterimgError("the dbscan clustering did not record its eps", exit_code=2)
            min_samples = int(result.clustering.get("min_samples") or 5)
            every = np.stack([vec[p] for p in keep]) if keep else np.zeros((0, 1))
            # DBSCAN measured eps between PCA-reduced vectors (--pca): core
            # points and new images are compared in that same space.
            projection = fit_projection(every, result.clustering.get("pca"), SEED)
            rule = {"name": "dbscan", "eps": float(eps), "min_samples": min_samples, "projection": projection}
            space = dict(zip(keep, _in_rule_space(every, rule)))
            every = np.stack(list(space.values())) if keep else every
            members = [p for c in clusters for p in c.members]
            x = np.stack([space[p] for p in members]) if members else np.zeros((0, every.shape[1]))
            near = ((1.0 - x @ every.T) <= float(eps) + 1e-9).sum(axis=1)  # self included, as sklearn counts
            rule["core_mask"] = (near >= min_samples).tolist()
        else:
            rule = {"name": "centroid", "radius_quantile": radius_quantile, "radius_slack": radius_slack}
            for c in clusters:
                rows = np.stack([vec[p] for p in c.members])
                dist = np.clip(1.0 - rows @ centroid_of(rows), 0.0, 2.0)
                c.radius = float(np.quantile(dist, radius_quantile) * radius_slack)
    return ClusterModel(method=result.method, params=backend.params, feature_version=backend.feature_version,
                        kind=kind, threshold=threshold, clustering=result.clustering or {"model": "graph"},
                        rule=rule, clusters=clusters, outliers=outliers, features=keep)


def fit(inputs, method: str = "phash", threshold: float | None = None, *, radius_quantile: float =
        DEFAULT_RADIUS_QUANTILE, radius_slack: float = DEFAULT_RADIUS_SLACK, **cluster_options) -> ClusterModel:
    """Cluster ``inputs`` (as :func:`clusterimg.cluster`, same options) and
    build the model of that clustering."""
    from clusterimg.api import cluster

    result = cluster(inputs, method, threshold, keep_features=True, **cluster_options)
    return from_result(result, radius_quantile=radius_quantile, radius_slack=radius_slack)


# -- loading ---------------------------------------------------------------------------


def load(path: str | os.PathLike) -> ClusterModel:
    """Read a model file; ClusterimgError (one line) for a missing, corrupt,
    other-format or other-backend-build file."""
    from clusterimg.cache import decode_feature
    from clusterimg.features import available

    path = Path(path)
    if not path.is_file():
        raise ClusterimgError(f"model file not found: {path}", exit_code=2)
    bad = f"{path} is not a clusterimg model file (or it is damaged)"
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            if set(infos) != {MODEL_JSON, FEATURES_NPZ}:
                raise ClusterimgError(bad, exit_code=2)
            if any(i.file_size > MAX_MEMBER_BYTES for i in infos.values()):
                raise ClusterimgError(f"{path}: a member of the model file is too large", exit_code=2)
            meta = json.loads(z.read(MODEL_JSON).decode("utf-8"))
            blob = z.read(FEATURES_NPZ)
    except ClusterimgError:
        raise
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError, ValueError):
        raise ClusterimgError(bad, exit_code=2)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ClusterimgError(bad, exit_code=2)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ClusterimgError(f"{path} was written by clusterimg {meta.get('clusterimg', '?')} in model format "
                              f"{meta.get('format_version')}; this clusterimg {__version__} reads format "
                              f"{FORMAT_VERSION}: fit the model again", exit_code=2)
    method = meta.get("method")
    if method not in available():
        raise ClusterimgError(f"{path} needs the {method!r} backend, which this clusterimg does not have", exit_code=2)
    backend_version = available()[method].feature_version
    if meta.get("feature_version") != backend_version:
        raise ClusterimgError(f"{path} holds {method} features of version {meta.get('feature_version')}; this "
                              f"clusterimg's {method} makes version {backend_version}: fit the model again",
                              exit_code=2)
    try:
        clusters = [ModelCluster(int(c["id"]), [str(m) for m in c["members"]], str(c["representative"]),
                                 [str(d) for d in c.get("digests", [])],
                                 None if c.get("radius") is None else float(c["radius"])) for c in meta["clusters"]]
        outliers = [str(p) for p in meta.get("outliers", [])]
        rule = dict(meta["rule"])
        if [c.id for c in clusters] != list(range(len(clusters))):
            raise ValueError("cluster ids")
        members = [p for c in clusters for p in c.members]
        features: dict[str, Feature] = {}
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            if meta["kind"] == "vector":
                vectors = z["vectors"]
                if len(vectors) != len(members) + len(outliers):
                    raise ValueError("vector count")
                features = {p: vectors[k] for k, p in enumerate(members + outliers)}
                if rule["name"] == "dbscan":
                    rule["core_mask"] = z["core"].astype(bool).tolist()
                    if len(rule["core_mask"]) != len(members):
                        raise ValueError("core count")
                    # models saved before the projection was kept compare full vectors
                    rule["projection"] = (z["pca_mean"], z["pca_components"]) if "pca_mean" in z else None
                    if rule["projection"] is not None and rule["projection"][1].shape[1:] != vectors.shape[1:]:
                        raise ValueError("projection")
                elif rule["name"] == "centroid":
                    if any(c.radius is None for c in clusters):
                        raise ValueError("radius")
                elif rule["name"] != "threshold":
                    raise ValueError("rule")
            else:
                if rule["name"] != "threshold":
                    raise ValueError("rule")
                features = {p: decode_feature(z[f"f{k}"].tobytes()) for k, p in enumerate(members)}
        model = ClusterModel(method=method, params=dict(meta["params"]), feature_version=backend_version,
                             kind=str(meta["kind"]), threshold=meta.get("threshold"), clustering=meta.get("clustering")
                             or {}, rule=rule, clusters=clusters, outliers=outliers, features=features,
                             version=str(meta.get("clusterimg", "?")))
        model.set_labels(meta.get("labels") or {})
        model.backend  # noqa: B018  the stored options must configure the backend
    except ClusterimgError as e:
        raise ClusterimgError(f"{path}: {e}", exit_code=2)
    except (KeyError, TypeError, ValueError, AttributeError, zipfile.BadZipFile, OSError, EOFError):
        raise ClusterimgError(bad, exit_code=2)
    return model


def read_labels_file(path: str | os.PathLike) -> dict:
    """The labels JSON object of ``path`` (one-line error if it is not one)."""
    data = read_json_file(path, "labels file")
    if not isinstance(data, dict):
        raise ClusterimgError(f"labels file {path} must hold an object {{\"cluster id\": [labels]}}", exit_code=2)
    return data


