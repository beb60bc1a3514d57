"""Exact search for every pair of binary hashes within a Hamming distance.

Hashes are rows of packed uint64 words (bit p of a hash is bit p % 64 of word
p // 64). Two strategies, both exact:

* all pairs, compared in vectorised blocks: O(n^2), best for a few thousand;
* multi-index hashing: the bits are cut into m chunks. If two hashes differ
  in at most r bits, the chunk distances sum to at most r, so (pigeonhole) some
  chunk differs in at most r // m bits. Hashes are therefore joined on chunk
  keys that make "chunk distance <= q" an exact key match (q = 0, 1 or 2, see
  :func:`chunk_keys`); every joined pair is then checked on the full hash.

:func:`pairs_within` picks the cheaper strategy from a cost model. Memory is
bounded whatever the data: candidate pairs are generated and verified in
blocks of at most ``PAIR_BLOCK``, so a huge bucket (many hashes sharing a
chunk, as photo hashes do) costs time, never unbounded memory.
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 64
MAX_CHUNK_BITS = 32  # a chunk then spans at most two words
MAX_CHUNK_RADIUS = 2  # radii 0, 1, 2 have exact join keys (chunk_keys)
PAIR_BLOCK = 1 << 21  # candidate pairs generated and verified at once
SLICE_ENTRIES = 1 << 22  # join entries sorted at once
# Relative costs of the strategies' unit steps, measured roughly with numpy:
# one all-pairs distance, one join key (generate + sort), one candidate pair.
COST_ALL_PAIRS = 0.2
COST_KEY = 12.0
COST_CANDIDATE = 3.0
MIN_ROWS_FOR_INDEX = 2048  # below this the all-pairs blocks always win


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance of packed hashes, broadcasting over leading axes."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


def _empty_pairs() -> tuple[np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64)


def all_pairs_within(words: np.ndarray, max_distance: int, cells: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) within ``max_distance``, by comparing each block of rows
    with all later rows. Memory stays near ``cells`` distances at a time."""
    n = len(words)
    block = max(1, min(512, cells // max(n, 1)))
    out_i, out_j = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        d = hamming(words[start:stop, None, :], words[None, start:, :])  # (rows, n - start)
        rows, cols = np.nonzero(d <= max_distance)
        keep = cols > rows  # cols count from start too: later rows only
        out_i.append(rows[keep] + start)
        out_j.append(cols[keep] + start)
    if not out_i:
        return _empty_pairs()
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


# -- multi-index hashing ----------------------------------------------------------


def chunk_bounds(bits: int, chunks: int) -> list[tuple[int, int]]:
    """(start, stop) bit ranges of ``chunks`` near-equal chunks, wider ones first."""
    base, extra = divmod(bits, chunks)
    bounds, start = [], 0
    for k in range(chunks):
        width = base + (k < extra)
        bounds.append((start, start + width))
        start += width
    return bounds


def chunk_radii(chunks: int, max_distance: int) -> list[int]:
    """Per-chunk radius q_k such that two hashes within ``max_distance`` are
    within q_k on at least one chunk k (-1: chunk not needed).

    With max_distance = chunks * q + a (0 <= a < chunks): if the first a + 1
    chunks each differed by q + 1 or more and the others by q or more, the
    total would be at least max_distance + 1.
    """
    q, a = divmod(max_distance, chunks)
    return [q if k <= a else q - 1 for k in range(chunks)]


def chunk_values(words: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Bits start..stop-1 of every hash as uint64 integers (width <= 32)."""
    word, offset = divmod(start, WORD_BITS)
    width = stop - start
    values = words[:, word] >> np.uint64(offset)
    if offset + width > WORD_BITS:  # the chunk runs on into the next word
        values = values | (words[:, word + 1] << np.uint64(WORD_BITS - offset))
    return values & np.uint64((1 << width) - 1)


def key_bits(width: int, radius: int) -> int:
    """Bits of a join key of a chunk of ``width`` bits (see :func:`key_variants`)."""
    return width + ((width - 1).bit_length() if radius == 1 else 0)


def key_variants(values: np.ndarray, width: int, radius: int):
    """Yield (keys, tag) join keys for "chunk distance <= radius", one array of
    keys per variant, so that two values within ``radius`` share a key:

    radius 0: the value itself.
    radius 1: for each bit t, the value with bit t cleared (t in the high
      bits); two values within 1 share exactly the key of the bit they differ
      in (all keys if equal). The tag is 2 t + the value's bit t.
    radius 2: the value and its ``width`` one-bit flips; two values within 2
      share a key (a value halfway between them). The tag is the flipped bit
      (``width`` for the value itself).
    Tags let :func:`first_sighting` keep a pair once per chunk although it
    shares several keys.
    """
    if radius == 0:
        yield values, np.zeros(len(values), np.uint64)
    elif radius == 1:
        for t in range(width):
            bit = np.uint64(1 << t)
            yield (np.uint64(t) << np.uint64(width)) | (values & ~bit), np.uint64(2 * t) + ((values >> np.uint64(t)) & np.uint64(1))
    elif radius == 2:
        yield values, np.full(len(values), width, np.uint64)
        for t in range(width):
            yield values ^ np.uint64(1 << t), np.full(len(values), t, np.uint64)
    else:
        raise ValueError(f"chunk radius {radius} has no join keys")


def first_sighting(tag_a: np.ndarray, tag_b: np.ndarray, width: int, radius: int) -> np.ndarray:
    """Mask of co-occurrences to keep so each pair counts once per chunk
    (``tag_a`` is the tag of the lower row of each pair)."""
    if radius == 0:
        return np.ones(len(tag_a), bool)
    if radius == 1:  # equal values share every key: keep bit 0 only
        return ((tag_a & 1) != (tag_b & 1)) | (tag_a < 2)
    # radius 2: a pair at distance 2 in bits i < j shares the keys tagged (i, j)
    # and (j, i); at distance 1, (width, i) and (i, width); equal values share
    # every (t, t) and keep the unflipped one.
    return (tag_a < tag_b) | ((tag_a == width) & (tag_b == width))


class EntryLayout:
    """One join entry packed in a uint64: key, then owner row, then tag, so a
    plain sort orders entries by key and, within a key, by row."""

    def __init__(self, rows: int, tag_bits: int):
        self.owner_bits = max(1, (rows - 1).bit_length())
        self.tag_bits = tag_bits
        self.low = np.uint64(self.owner_bits + tag_bits)

    def pack(self, keys, owners, tags) -> np.ndarray:
        return (keys << self.low) | (owners.astype(np.uint64) << np.uint64(self.tag_bits)) | tags

    def key(self, packed):
        return packed >> self.low

    def owner(self, packed):
        return ((packed >> np.uint64(self.tag_bits)) & np.uint64((1 << self.owner_bits) - 1)).astype(np.int64)

    def tag(self, packed):
        return packed & np.uint64((1 << self.tag_bits) - 1)


def sliced_entries(values: np.ndarray, width: int, radius: int, layout: EntryLayout, slices: int):
    """Yield the sorted packed entries of one chunk, one key range at a time:
    keys of different ranges never match, so only one range is in memory."""
    shift = np.uint64(max(0, key_bits(width, radius) - (slices - 1).bit_length()))
    for part in range(slices):
        pieces = []
        for keys, tags in key_variants(values, width, radius):
            rows = np.flatnonzero((keys >> shift) == np.uint64(part)) if slices > 1 else slice(None)
            owners = rows if slices > 1 else np.arange(len(values))
            pieces.append(layout.pack(keys[rows], owners, tags[rows]))
        packed = np.concatenate(pieces)
        del pieces
        packed.sort()
        yield packed


def pairs_sharing_keys(packed: np.ndarray, layout: EntryLayout, block: int = PAIR_BLOCK):
    """Yield (row a, row b, tag a, tag b) for every two sorted entries with
    equal keys, row a < row b, in blocks of about ``block`` pairs."""
    keys = layout.key(packed)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    del keys
    lengths = np.diff(np.append(starts, len(packed)))
    later = np.repeat(starts + lengths, lengths) - np.arange(len(packed)) - 1  # partners after each entry
    has_later = np.flatnonzero(later)
    later = later[has_later]
    later_cum = np.cumsum(later)
    start = 0
    while start < len(has_later):
        # as many entries as fit in one block (at least one: a huge run is still
        # split by entry, so memory stays near one entry's partners)
        base = later_cum[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(later_cum, base + block, side="right")))
        count = later[start:stop]
        first = np.repeat(has_later[start:stop], count)
        step = np.arange(len(first)) - np.repeat(np.cumsum(count) - count, count)
        a, b = packed[first], packed[first + 1 + step]
        yield layout.owner(a), layout.owner(b), layout.tag(a), layout.tag(b)
        start = stop


def index_plan(n: int, bits: int, max_distance: int) -> tuple[float, int] | None:
    """(estimated cost, chunk count) of the cheapest multi-index plan for ``n``
    uniformly random hashes, or None if no plan applies."""
    best = None
    for chunks in range(1, bits + 1):
        bounds = chunk_bounds(bits, chunks)
        if bounds[0][1] - bounds[0][0] > MAX_CHUNK_BITS:
            continue
        radii = chunk_radii(chunks, max_distance)
        if max(radii) > MAX_CHUNK_RADIUS:
            continue
        if any(key_bits(hi - lo, q) + max(1, (n - 1).bit_length()) + (2 * (hi - lo) + 1).bit_length() > 64
               for (lo, hi), q in zip(bounds, radii) if q >= 0):
            continue  # a join entry would not fit in a uint64
        cost = 0.0
        for (lo, hi), q in zip(bounds, radii):
            w = hi - lo
            if q < 0:
                continue
            entries = n * (1 if q == 0 else w if q == 1 else w + 1)
            key_space = 2.0**w * (w / 2 if q == 1 else 1)
            cost += entries * COST_KEY + entries**2 / (2 * key_space) * COST_CANDIDATE
        if best is None or cost < best[0]:
            best = (cost, chunks)
    return best


def indexed_pairs_within(words: np.ndarray, max_distance: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) within ``max_distance``, by multi-index hashing on
    ``chunks`` chunks. Exact."""
    n, n_words = words.shape
    found_i, found_j = [], []
    for (lo, hi), radius in zip(chunk_bounds(n_words * WORD_BITS, chunks), chunk_radii(chunks, max_distance)):
        if radius < 0:
            continue
        width = hi - lo
        values = chunk_values(words, lo, hi)
        variants = 1 if radius == 0 else width + (radius == 2)
        slices = 1 << max(0, (-(-n * variants // SLICE_ENTRIES) - 1).bit_length())
        layout = EntryLayout(n, tag_bits=(2 * width + 1).bit_length())
        for packed in sliced_entries(values, width, radius, layout, slices):
            for a, b, tag_a, tag_b in pairs_sharing_keys(packed, layout):
                once = first_sighting(tag_a, tag_b, width, radius)
                a, b = a[once], b[once]
                close = hamming(words[a], words[b]) <= max_distance
                found_i.append(a[close]), found_j.append(b[close])
    if not found_i:
        return _empty_pairs()
    # a pair close on several chunks was found once per chunk
    key = np.unique(np.concatenate(found_i) * n + np.concatenate(found_j))
    return key // n, key % n


def pairs_within(words: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows of ``words`` (n, n_words uint64) at Hamming
    distance <= max_distance. Exact; picks all-pairs blocks or multi-index
    hashing, whichever the cost model says is cheaper."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.ndim == 1:
        words = words[:, None]
    n, n_words = words.shape
    if n < 2 or max_distance < 0:
        return _empty_pairs()
    if n >= MIN_ROWS_FOR_INDEX:
        plan = index_plan(n, n_words * WORD_BITS, max_distance)
        if plan is not None and plan[0] < n * n / 2 * n_words * COST_ALL_PAIRS:
            return indexed_pairs_within(words, max_distance, plan[1])
    return all_pairs_within(words, max_distance)
