"""Perceptual hash: a DCT fingerprint of a tiny grayscale thumbnail.

Fast and exact to search, tolerant of resizing, recompression, tone changes
and mild blur; blind to big crops. Similarity = 1 - hamming / bits (the
original Clusterimg divided by the hash's row count and scored below 0).
"""
from __future__ import annotations

import cv2
import numpy as np

from clusterimg.methods.base import Method, Option


def dct_hash_bits(gray: np.ndarray, hash_size: int) -> np.ndarray:
    """The pHash bits (hash_size**2 booleans) of a grayscale image."""
    side = hash_size * 4
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:hash_size, :hash_size]
    return (low > np.median(low)).ravel()


def pack_words(bits: np.ndarray) -> np.ndarray:
    """Booleans packed into uint64 words (zero padded), for popcount distances."""
    padded = np.zeros(-(-bits.size // 64) * 64, dtype=bool)
    padded[: bits.size] = bits
    return np.packbits(padded).view(">u8").astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance of packed hashes, broadcasting over leading axes."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


def pairs_within(words: np.ndarray, max_distance: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of hashes at Hamming distance <= max_distance.

    Exact: rows are compared with all later rows in vectorised blocks, so the
    memory stays at block * n distances whatever the folder size.
    """
    n = len(words)
    out_i, out_j = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = hamming(words[start:stop, None, :], words[None, start:, :])  # (rows, n - start)
        rows, cols = np.nonzero(d <= max_distance)
        cols = cols + start
        keep = cols > rows + start
        out_i.append(rows[keep] + start)
        out_j.append(cols[keep])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


class PHash(Method):
    name = "phash"
    summary = "perceptual hash: fastest; resized, recompressed, recoloured, blurred copies"
    default_threshold = 0.8
    options = (
        Option("hash_size", int, 8, "phash: hash side in bits (8 gives a 64-bit hash)"),
    )
    cache_scores = False  # a popcount is cheaper than a cache lookup
    decode_side = 128

    def check_params(self) -> None:
        if not 4 <= self.params["hash_size"] <= 32:
            raise ValueError("--hash-size must be between 4 and 32")

    @property
    def bits(self) -> int:
        return self.params["hash_size"] ** 2

    def extract(self, image: np.ndarray) -> np.ndarray:
        return pack_words(dct_hash_bits(image, self.params["hash_size"]))

    def stack(self, features):
        return np.stack(features) if len(features) else np.zeros((0, 1), np.uint64)

    def score(self, stacked, i, j):
        return 1.0 - hamming(stacked[i], stacked[j]) / self.bits

    def candidates(self, stacked, floor):
        max_distance = int(np.floor((1.0 - floor) * self.bits + 1e-9))
        return pairs_within(stacked, max_distance)
