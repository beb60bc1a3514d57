"""The backend interface every similarity method implements.

A backend turns one decoded image into a feature (a numpy array, or a dict of
numpy arrays, so features can be stored without pickle), and scores pairs of
features as a similarity in [0, 1], higher meaning more alike. Scoring works on
arrays of pair indices, so a backend can vectorise over many pairs at once.

Optionally a backend proposes candidate pairs (an index: Hamming search, LSH,
nearest neighbours) so that not every pair has to be scored; the pipeline then
scores only those candidates. Grouping and output never see any of this.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence, Union

import numpy as np

from clusterimg.images import load_image
from clusterimg.options import Configurable, Option

Feature = Union[np.ndarray, dict]


def candidates_option(default: int) -> Option:
    """The shared ``--candidates`` option of backends with a nearest-neighbour search."""
    return Option("candidates", int, default,
                  "nearest images per image that get the full comparison (--exhaustive: all pairs)",
                  changes_features=False)


class Method(Configurable):
    """Base class of the backends. Subclasses set the class attributes and
    implement :meth:`extract` and :meth:`score`."""

    summary: ClassVar[str]  # one line: what the backend is good at
    # "pairs": near-duplicate backends, clustered by a threshold on pair scores;
    # "vector": a fixed-length vector per image, clustered by vector models.
    kind: ClassVar[str] = "pairs"
    default_threshold: ClassVar[float]
    # Whether pair scores are expensive enough to be worth storing in the cache.
    cache_scores: ClassVar[bool] = True
    # Whether one pair costs milliseconds (a keypoint match): such scores are
    # remembered for the run and scored in worker processes when there are
    # several (engine/scoring.py); the features must be numpy arrays or dicts
    # of them, and score() on a stack of all features must equal score() on a
    # stack of any subset (a stack that only gathers the features).
    parallel_scores: ClassVar[bool] = False
    # Fewest pairs worth a round trip to the scoring workers (None: the
    # engine's default, engine/scoring.py); 1 for a backend whose pair can
    # cost a tenth of a second.
    min_pool_pairs: ClassVar[int | None] = None
    # Whether :meth:`screen` gives a cheap first look at pairs (a cascade whose
    # first stage settles most of them).
    screens: ClassVar[bool] = False
    # Pairs scored per call (and per step of the progress bar): thousands for
    # vectorised backends, a few hundred for those that take milliseconds a pair.
    score_chunk: ClassVar[int] = 4096
    # Whether extraction runs in threads instead of worker processes: for a
    # backend whose per-image time is almost all decoding and OpenCV calls,
    # which release the GIL, so threads scale without a process pool's start-up.
    extract_in_threads: ClassVar[bool] = False
    # Where a backend that trains a model on the folder keeps it (None: the
    # user cache folder's models/); the API points it at --cache-dir.
    model_dir = None
    # Version of the feature format: bump it when extract() changes, so that
    # cached features of an older format are never reused.
    feature_version: ClassVar[int] = 1

    def __init__(self, **values: Any):
        super().__init__(**values)
        if self.params.get("candidates", 1) < 1:
            raise ValueError("--candidates must be at least 1")

    # -- decoding and features -------------------------------------------
    decode_side: ClassVar[int | None] = 256  # longest side the backend needs
    decode_gray: ClassVar[bool] = True

    def decode(self, path) -> np.ndarray:
        return load_image(path, max_side=self.decode_side, gray=self.decode_gray)

    def extract(self, image: np.ndarray) -> Feature:
        raise NotImplementedError

    def feature(self, path) -> Feature:
        """Decode and extract in one step."""
        return self.extract(self.decode(path))

    def extract_many(self, images: Sequence[np.ndarray]) -> list[Feature]:
        """Features of several decoded images at once (what a worker runs on
        its chunk of files). Override to batch a model; default: one by one."""
        return [self.extract(image) for image in images]

    def prepare(self, paths: Sequence[str], bars=None) -> None:
        """Called once in the main process with every image path before any
        extraction: a backend that learns from the folder (an autoencoder)
        trains or loads its model here. Default: nothing to do."""

    # -- pair scoring and search -------------------------------------------
    def stack(self, features: Sequence[Feature]) -> Any:
        """Gather the features of one search (a batch, or the representatives)
        into whatever structure makes scoring fast. Default: the list itself."""
        return list(features)

    def score(self, stacked: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Similarities in [0, 1] of the pairs (i[k], j[k]) of a stack."""
        raise NotImplementedError

    def screen(self, stacked: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """For a backend that ``screens``: each pair's score where a cheap
        first stage settles it (the very value :meth:`score` gives), NaN
        where only :meth:`score` can tell. The search screens every candidate
        first and gives score() only the unsettled pairs between images the
        settled ones have not already joined."""
        raise NotImplementedError

    def candidates(self, stacked: Any, floor: float) -> tuple[np.ndarray, ...] | None:
        """Pairs (i, j) worth scoring when only pairs scoring >= ``floor`` are
        wanted, or None to score every pair (the default). A third array may
        give each pair's rank among i's candidates (0: the nearest); pairs are
        then scored nearest ranks first (see engine/search.find_pairs)."""
        return None

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({opts})"


class VectorMethod(Method):
    """A backend whose feature is one float vector per image (CNN embeddings,
    pixels, HOG, autoencoder latents). Vector clustering models work on
    :meth:`vectors`; pair scores are cosine similarities clipped to [0, 1], so
    the threshold clustering and the cache work for these backends too."""

    kind = "vector"
    cache_scores = False  # a dot product is cheaper than a cache lookup

    def vectors(self, features: Sequence[Feature]) -> np.ndarray:
        """(n, d) float32 matrix of the features, one row per image."""
        if not len(features):
            return np.zeros((0, 0), np.float32)
        return np.stack([np.asarray(f, dtype=np.float32).ravel() for f in features])

    def stack(self, features):
        x = self.vectors(features)
        norms = np.linalg.norm(x, axis=1, keepdims=True) if x.size else np.ones((len(x), 1))
        return x / np.maximum(norms, 1e-12)

    def score(self, stacked, i, j):
        return np.clip(np.einsum("ij,ij->i", stacked[i], stacked[j]), 0.0, 1.0)
