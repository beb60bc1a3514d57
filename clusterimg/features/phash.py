"""Perceptual hashes: a binary fingerprint of a tiny grayscale thumbnail.

Fast and exact to search, tolerant of resizing, recompression, tone changes
and mild blur; blind to big crops. Similarity = 1 - hamming / bits (the
original Clusterimg divided by the hash's row count and scored below 0).

Four hashes (--hash): phash (DCT, the default), dhash (horizontal gradient
signs), ahash (above the mean) and whash (Haar wavelet, via imagehash). With
--rotations each image also stores the hashes of its 7 other rotations and
mirror images, and a pair scores the best of the 8 alignments, so a rotated
or mirrored copy matches.
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.engine.hamming import hamming, pairs_within
from clusterimg.features.base import Method, Option
from clusterimg.images import load_image

HASH_KINDS = ("phash", "dhash", "ahash", "whash")
DIHEDRAL = 8  # rotations by 0/90/180/270 degrees, each also mirrored

# F1-best thresholds on the dev benchmark (benchmarks/calibrate.py), by
# (hash, rotations). The class attribute default_threshold is plain phash's.
# Calibrated with 64-bit hashes (--hash-size 8).
CALIBRATED_THRESHOLDS = {
    ("phash", False): 0.80,
    ("phash", True): 0.80,
    ("dhash", False): 0.92,
    ("dhash", True): 0.93,
    ("ahash", False): 0.95,
    ("ahash", True): 0.96,
    ("whash", False): 0.96,
    ("whash", True): 0.96,
}


def square_thumbnail(gray: np.ndarray, side: int) -> np.ndarray:
    """The image squeezed to side x side (uint8): aspect ratio is ignored, so a
    resized copy gives the same thumbnail, and so do the rotations of one."""
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)


def dihedral_views(square: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and mirror images of a square array, identity first."""
    turns = [np.rot90(square, k) for k in range(4)]
    return [np.ascontiguousarray(v) for v in turns + [np.fliplr(t) for t in turns]]


def dct_bits(thumb: np.ndarray, hash_size: int) -> np.ndarray:
    """pHash: signs of the low DCT frequencies against their median."""
    low = cv2.dct(thumb.astype(np.float32))[:hash_size, :hash_size]
    return (low > np.median(low)).ravel()


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II basis (rows), the transform cv2.dct applies."""
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def difference_bits(thumb: np.ndarray, hash_size: int) -> np.ndarray:
    """dHash: is each pixel brighter than its left neighbour."""
    small = cv2.resize(thumb, (hash_size + 1, hash_size), interpolation=cv2.INTER_AREA).astype(np.int16)
    return (small[:, 1:] > small[:, :-1]).ravel()


def average_bits(thumb: np.ndarray, hash_size: int) -> np.ndarray:
    """aHash: is each pixel brighter than the mean."""
    small = cv2.resize(thumb, (hash_size, hash_size), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (small > small.mean()).ravel()


def wavelet_bits(thumb: np.ndarray, hash_size: int) -> np.ndarray:
    """wHash: Haar wavelet low band against its median (imagehash)."""
    import imagehash
    from PIL import Image

    return imagehash.whash(Image.fromarray(thumb), hash_size=hash_size, image_scale=thumb.shape[0]).hash.ravel()


HASH_BITS = {"phash": dct_bits, "dhash": difference_bits, "ahash": average_bits, "whash": wavelet_bits}


def pack_words(bits: np.ndarray) -> np.ndarray:
    """Booleans packed into uint64 words (zero padded) along the last axis,
    for popcount distances: one hash from a vector, one per row from a matrix."""
    count = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (-(-count // 64) * 64,), dtype=bool)
    padded[..., :count] = bits
    return np.packbits(padded, axis=-1).view(">u8").astype(np.uint64)


def max_distance_for(floor: float, bits: int) -> int:
    """The largest Hamming distance whose similarity is still >= floor."""
    return int(np.floor((1.0 - floor) * bits + 1e-9))


class PHash(Method):
    name = "phash"
    summary = "perceptual hash: fastest; resized, recompressed, recoloured, blurred copies"
    default_threshold = CALIBRATED_THRESHOLDS[("phash", False)]
    options = (
        Option("hash", str, "phash", "phash: which hash: phash (DCT), dhash (gradient), ahash (mean), whash (wavelet)",
               choices=HASH_KINDS),
        Option("hash_size", int, 8, "phash: hash side in bits (8 gives a 64-bit hash)"),
        Option("rotations", bool, False,
               "phash: score the best of the 8 rotations/mirror images (rotated or mirrored copies match)"),
    )
    cache_scores = False  # a popcount is cheaper than a cache lookup
    extract_in_threads = True  # a JPEG decode and one resize per image, both in OpenCV
    decode_side = 128
    # 2: features may hold 8 hashes (rotations) and other hash kinds
    # 3: the thumbnail is resized straight from the decoder's reduced image
    feature_version = 3

    def decode(self, path) -> np.ndarray:
        # Straight to a small gray image: the JPEG decoder's DCT scaling does
        # the bulk of the shrinking (to at least decode_side, as fine a source
        # for the thumbnail as the full image on the dev benchmark) and
        # extract() resizes once, to the thumbnail.
        return load_image(path, max_side=max(self.decode_side, 4 * self.params["hash_size"]), gray=True,
                          reduce_only=True)

    def check_params(self) -> None:
        size = self.params["hash_size"]
        if not 4 <= size <= 32:
            raise ValueError("--hash-size must be between 4 and 32")
        if self.params["hash"] not in HASH_KINDS:
            raise ValueError(f"--hash must be one of {', '.join(HASH_KINDS)}")
        if self.params["hash"] == "whash" and size & (size - 1):
            raise ValueError("--hash whash needs a power of two --hash-size (4, 8, 16 or 32)")
        # The threshold used when none is given follows the chosen hash (an
        # instance attribute shadows the class's plain-phash value).
        calibrated = CALIBRATED_THRESHOLDS.get((self.params["hash"], bool(self.params["rotations"])))
        if calibrated is not None:
            self.default_threshold = calibrated

    @property
    def bits(self) -> int:
        return self.params["hash_size"] ** 2

    def extract(self, image: np.ndarray) -> np.ndarray:
        """One hash (words,) or, with rotations, one per alignment (8, words)."""
        size = self.params["hash_size"]
        bits_of = HASH_BITS[self.params["hash"]]
        thumb = square_thumbnail(image, 4 * size)
        if not self.params["rotations"]:
            return pack_words(bits_of(thumb, size))
        return np.stack([pack_words(bits_of(view, size)) for view in dihedral_views(thumb)])

    def extract_many(self, images):
        """The hashes of a chunk of images in a few array operations: the
        per-image numpy calls cost more than the arithmetic (the decoder
        runs in threads, and this Python work holds the lock they share)."""
        size = self.params["hash_size"]
        if self.params["hash"] != "phash" or self.params["rotations"] or not len(images):
            return super().extract_many(images)
        side = 4 * size
        thumbs = np.stack([square_thumbnail(image, side) for image in images]).astype(np.float64)
        basis = dct_matrix(side)[:size]
        low = (basis @ thumbs @ basis.T).reshape(len(images), -1)
        return list(pack_words(low > np.median(low, axis=1, keepdims=True)))

    def stack(self, features):
        if len(features):
            return np.stack(features)
        words = -(-self.bits // 64)
        return np.zeros((0, DIHEDRAL, words) if self.params["rotations"] else (0, words), np.uint64)

    def distances(self, stacked, i, j) -> np.ndarray:
        if not self.params["rotations"]:
            return hamming(stacked[i], stacked[j])
        # Each side's upright hash against every alignment of the other: the
        # 8 hashes of one image are not exact bit permutations of each other
        # (the median moves), so both directions count and the score is symmetric.
        one_way = hamming(stacked[i][:, :1], stacked[j]).min(axis=1)
        other_way = hamming(stacked[i], stacked[j][:, :1]).min(axis=1)
        return np.minimum(one_way, other_way)

    def score(self, stacked, i, j):
        return 1.0 - self.distances(stacked, i, j) / self.bits

    def candidates(self, stacked, floor):
        max_distance = max_distance_for(floor, self.bits)
        if max_distance >= self.bits:
            return None  # every pair qualifies
        if not self.params["rotations"]:
            return pairs_within(stacked, max_distance)
        # Search all 8n hashes at once and keep pairs of different images where
        # one side is upright: exactly the alignments the score looks at.
        n = len(stacked)
        flat_i, flat_j = pairs_within(stacked.reshape(n * DIHEDRAL, -1), max_distance)
        image_i, view_i = np.divmod(flat_i, DIHEDRAL)
        image_j, view_j = np.divmod(flat_j, DIHEDRAL)
        keep = (image_i != image_j) & ((view_i == 0) | (view_j == 0))
        return image_i[keep], image_j[keep]
