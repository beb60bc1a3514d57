"""MinHash of Harris corners: where an image's most distinct corners lie.

The image is squeezed to a fixed square grayscale thumbnail (so a resized copy
gives the same one), its strongest Harris corners are kept, and each corner
becomes tokens: the grid cell it falls in, or (with --neighbours) the cells a
small square around it touches, so that a corner moved by a pixel or two
across a cell border still shares a token. Raw coordinates would never match.
The token set is MinHashed (datasketch); a pair scores the fraction of equal
MinHash values, an estimate of the Jaccard similarity of the two sets.
Candidates come from datasketch's MinHashLSH with bands chosen for the
threshold, so a search is near linear in the number of images.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from clusterimg.features.base import Method, Option

THUMB_SIDE = 192  # pixels of the square thumbnail the corners are found in
SEED = 1  # of the MinHash permutations: fixed, so signatures stay comparable
# A corner must respond at least this fraction of the strongest one (Harris
# responses scale with contrast, so a relative floor suits dim and bright images
# alike), and at least MIN_RESPONSE (a blank or flat image has no corners).
RELATIVE_RESPONSE = 0.01
MIN_RESPONSE = 1e-6
SUPPRESSION = 7  # a corner must be the strongest in its SUPPRESSION x SUPPRESSION window
# Recall-leaning LSH: a missed pair is lost, a false candidate only costs a score.
LSH_WEIGHTS = (0.3, 0.7)


def thumbnail(gray: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The image squeezed to side x side, float32 in [0, 1]."""
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def strongest_corners(thumb: np.ndarray, count: int) -> np.ndarray:
    """(row, col) of up to ``count`` Harris corners, strongest first, each the
    local maximum of its neighbourhood (no clumps of one corner's pixels)."""
    response = cv2.cornerHarris(thumb, blockSize=3, ksize=3, k=0.04)
    peak = cv2.dilate(response, np.ones((SUPPRESSION, SUPPRESSION), np.uint8))
    floor = max(MIN_RESPONSE, RELATIVE_RESPONSE * float(response.max(initial=0.0)))
    rows, cols = np.nonzero((response >= peak) & (response > floor))
    strongest = np.argsort(-response[rows, cols], kind="stable")[:count]
    return np.stack([rows[strongest], cols[strongest]], axis=1)


def corner_tokens(corners: np.ndarray, side: int, grid: int, neighbours: bool) -> np.ndarray:
    """Token ids (row_cell * grid + col_cell) of the corners' grid cells.

    With ``neighbours`` each corner gives the cells touched by a square of half
    a cell around it: up to 4 cells, one when the corner sits mid-cell.
    """
    cell = side / grid
    if len(corners) == 0:
        return np.empty(0, np.int64)
    position = corners.astype(np.float64) + 0.5
    if neighbours:
        reach = cell / 2
        offsets = np.array([[-reach, -reach], [-reach, reach], [reach, -reach], [reach, reach]])
        position = (position[:, None, :] + offsets[None]).reshape(-1, 2)
    cells = np.clip(np.floor(position / cell).astype(np.int64), 0, grid - 1)
    return np.unique(cells[:, 0] * grid + cells[:, 1])


@dataclass
class Signatures:
    """MinHash values of a search's images, and which had no tokens at all."""

    values: np.ndarray  # (n, num_perm) uint64
    empty: np.ndarray  # (n,) bool


class MinHashCorners(Method):
    name = "minhash"
    summary = "MinHash of Harris corner positions: LSH search, near linear in the folder size"
    default_threshold = 0.45  # F1-best on the dev benchmark (benchmarks/calibrate.py)
    options = (
        Option("corners", int, 48, "minhash: how many of the strongest Harris corners to keep"),
        Option("grid", int, 24, "minhash: grid cells per side that corner positions are quantised to"),
        Option("neighbours", bool, True, "minhash: a corner also counts in the cells just around it"),
        Option("num_perm", int, 128, "minhash: MinHash permutations (signature length)"),
    )
    cache_scores = False  # comparing two short arrays is cheaper than a cache lookup
    decode_side = 256

    def check_params(self) -> None:
        if not 1 <= self.params["corners"] <= 10_000:
            raise ValueError("--corners must be between 1 and 10000")
        if not 2 <= self.params["grid"] <= THUMB_SIDE:
            raise ValueError(f"--grid must be between 2 and {THUMB_SIDE}")
        if not 16 <= self.params["num_perm"] <= 1024:
            raise ValueError("--num-perm must be between 16 and 1024")
        self._table = None  # built on first use, in each worker

    # -- features -------------------------------------------------------------
    def _minhash(self):
        """A fresh datasketch MinHash with this backend's permutations."""
        from datasketch import MinHash

        return MinHash(num_perm=self.params["num_perm"], seed=SEED)

    def token_table(self) -> np.ndarray:
        """(grid**2 + 1, num_perm) MinHash values of each single token, the last
        row empty. There are only grid**2 possible tokens, and the MinHash of a
        set is the slot-wise minimum of its tokens' MinHashes, so a signature is
        one table lookup and a min instead of hashing every token again."""
        if self._table is None:
            sketch = self._minhash()
            rows = []
            for token in range(self.params["grid"] ** 2):
                single = sketch.copy()
                single.update(int(token).to_bytes(4, "little"))
                rows.append(single.hashvalues)
            rows.append(sketch.hashvalues)  # no token: every slot at its maximum
            self._table = np.asarray(rows, dtype=np.uint64)
        return self._table

    def empty_value(self) -> int:
        """The value every slot of a MinHash holds before any token is added."""
        return int(self.token_table()[-1, 0])

    def tokens(self, image: np.ndarray) -> np.ndarray:
        thumb = thumbnail(image)
        corners = strongest_corners(thumb, self.params["corners"])
        return corner_tokens(corners, THUMB_SIDE, self.params["grid"], self.params["neighbours"])

    def extract(self, image: np.ndarray) -> np.ndarray:
        """The MinHash values (num_perm,) uint64 of the image's corner tokens
        (all at the empty value when there are none)."""
        table = self.token_table()
        tokens = self.tokens(image)
        return table[tokens].min(axis=0) if len(tokens) else table[-1].copy()

    # -- scoring and search -----------------------------------------------------
    def stack(self, features) -> Signatures:
        values = np.stack(features) if len(features) else np.zeros((0, self.params["num_perm"]), np.uint64)
        return Signatures(values, np.all(values == np.uint64(self.empty_value()), axis=1))

    def score(self, stacked: Signatures, i, j):
        agree = (stacked.values[i] == stacked.values[j]).mean(axis=1)
        # no tokens means nothing to compare: two blank images are not duplicates
        return np.where(stacked.empty[i] | stacked.empty[j], 0.0, agree)

    def candidates(self, stacked: Signatures, floor):
        from datasketch import LeanMinHash, MinHashLSH

        if floor <= 0:
            return None  # every pair qualifies
        num_perm = self.params["num_perm"]
        lsh = MinHashLSH(threshold=min(max(floor, 0.01), 0.99), num_perm=num_perm, weights=LSH_WEIGHTS)
        scheme = self._minhash().scheme
        sketches = {}
        for k in np.flatnonzero(~stacked.empty):
            sketch = LeanMinHash.__new__(LeanMinHash)
            sketch._initialize_slots(SEED, stacked.values[k], scheme)
            sketches[int(k)] = sketch
            lsh.insert(int(k), sketch, check_duplication=False)
        out_i, out_j = [], []
        for k, sketch in sketches.items():
            later = [other for other in lsh.query(sketch) if other > k]
            out_i.extend([k] * len(later)), out_j.extend(later)
        return np.asarray(out_i, np.int64), np.asarray(out_j, np.int64)
