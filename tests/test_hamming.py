"""Exactness of the Hamming pair search: multi-index hashing against all pairs."""
import numpy as np
import pytest

from clusterimg.engine.hamming import (
    all_pairs_within, chunk_radii, hamming, indexed_pairs_within, pairs_within,
)


def planted_hashes(n, words, max_distance, seed):
    """Random hashes, the last third being copies of earlier ones with 0..max_distance+2 bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64, endpoint=False)
    bits = words * 64
    for k in range(2 * n // 3, n):
        copy = hashes[rng.integers(0, 2 * n // 3)].copy()
        for b in rng.choice(bits, size=k % (max_distance + 3), replace=False):
            copy[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        hashes[k] = copy
    return hashes


def as_set(pairs):
    return set(zip(pairs[0].tolist(), pairs[1].tolist()))


@pytest.mark.parametrize("max_distance,chunks", [(0, 1), (2, 2), (5, 3), (8, 3), (8, 4), (8, 9), (6, 12)])
def test_indexed_search_equals_all_pairs(max_distance, chunks):
    hashes = planted_hashes(3000, 1, max_distance, seed=max_distance * 31 + chunks)
    expected = as_set(all_pairs_within(hashes, max_distance))
    assert len(expected) > 100  # the planted pairs are there to be found
    assert as_set(indexed_pairs_within(hashes, max_distance, chunks)) == expected


def test_indexed_search_on_multiword_hashes():
    hashes = planted_hashes(2500, 2, 6, seed=5)  # chunks straddle the word boundary
    assert as_set(indexed_pairs_within(hashes, 6, 5)) == as_set(all_pairs_within(hashes, 6))


def test_clustered_hashes_with_a_huge_bucket():
    """Photo hashes cluster: many identical and near-identical hashes share every chunk."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)
    flips = np.uint64(1) << rng.integers(0, 64, size=(400, 1)).astype(np.uint64)
    clustered = np.where(rng.random((400, 1)) < 0.5, base, base ^ flips)
    hashes = np.concatenate([clustered, planted_hashes(2000, 1, 8, seed=4)])
    expected = as_set(all_pairs_within(hashes, 8))
    assert as_set(indexed_pairs_within(hashes, 8, 3)) == expected
    assert as_set(pairs_within(hashes, 8)) == expected


def test_pairs_within_picks_a_strategy_and_stays_exact():
    hashes = planted_hashes(4000, 1, 8, seed=9)
    i, j = pairs_within(hashes, 8)
    assert np.all(i < j)
    assert as_set((i, j)) == as_set(all_pairs_within(hashes, 8))
    assert np.all(hamming(hashes[i], hashes[j]) <= 8)


def test_trivial_inputs():
    one = np.zeros((1, 1), np.uint64)
    assert len(pairs_within(one, 3)[0]) == 0
    assert len(pairs_within(np.zeros((0, 1), np.uint64), 3)[0]) == 0
    assert as_set(pairs_within(np.zeros((3, 1), np.uint64), 0)) == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize("chunks,distance", [(3, 8), (4, 8), (9, 8), (5, 12), (2, 1)])
def test_chunk_radii_pigeonhole(chunks, distance):
    """No split of `distance` differing bits over the chunks exceeds every radius."""
    radii = chunk_radii(chunks, distance)
    # the worst case puts radius + 1 bits in each chunk: that must exceed the distance
    assert sum(r + 1 for r in radii) > distance
