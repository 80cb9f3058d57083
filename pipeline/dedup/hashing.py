"""Exact and perceptual hashes: sha256 of the encoded bytes, DCT pHash, vectorised Hamming.

pHash (Zauner 2010, as in the `imagehash` library): greyscale, 32x32, 2-D DCT-II, the top-left 8x8
low-frequency block, each coefficient thresholded at the block's median. The DC term only carries
mean brightness (it is above the median for every natural image), so it is left out of the median
and its bit is always 0: 63 informative bits in a 64-bit integer, and Hamming distances are 0..63.
"""

from __future__ import annotations

import hashlib
from itertools import pairwise

import numpy as np
from PIL import Image
from scipy import fft

HASH_SIZE = 8  # 8x8 block -> 64-bit hash
DCT_SIZE = 32  # input side: 4x the hash side, as in the reference implementation
_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)
# Flipping an image left-right multiplies DCT-II column frequency k by (-1)^k.
_FLIP_SIGN = np.where(np.arange(HASH_SIZE) % 2 == 0, 1.0, -1.0)[None, :]
_DC_MASK = np.ones((HASH_SIZE, HASH_SIZE), dtype=bool)
_DC_MASK[0, 0] = False
# 16-bit popcount table for numpy builds without np.bitwise_count (numpy < 2.0).
_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def phash_grey(grey: np.ndarray) -> tuple[int, int]:
    """pHash of a 32x32 float greyscale array: (hash, hash of the left-right mirrored image)."""
    block = fft.dctn(grey.astype(np.float64), type=2, norm="ortho")[:HASH_SIZE, :HASH_SIZE]
    return _threshold_bits(block), _threshold_bits(block * _FLIP_SIGN)


def phash(image: Image.Image) -> tuple[int, int]:
    """pHash of a PIL image and of its mirror image, both as Python ints in [0, 2**64)."""
    grey = image.convert("L").resize((DCT_SIZE, DCT_SIZE), Image.Resampling.LANCZOS)
    return phash_grey(np.asarray(grey, dtype=np.float64))


def _threshold_bits(block: np.ndarray) -> int:
    bits = (block > np.median(block[_DC_MASK])) & _DC_MASK
    return int(np.bitwise_or.reduce(np.where(bits.ravel(), _BIT_WEIGHTS, np.uint64(0))))


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of every element of a uint64 array (uint8 result)."""
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return popcount64_table(x)


def popcount64_table(x: np.ndarray) -> np.ndarray:
    """Table-based popcount; the fallback path, kept public so tests can check it too."""
    halves = np.asarray(x, dtype=np.uint64).view(np.uint16)
    return _POPCOUNT16[halves].reshape(*np.shape(x), 4).sum(axis=-1, dtype=np.uint8)


def hamming_matrix(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances, shape (len(queries), len(refs)), uint8."""
    q = np.asarray(queries, dtype=np.uint64)[:, None]
    r = np.asarray(refs, dtype=np.uint64)[None, :]
    return popcount64(np.bitwise_xor(q, r))


def nearest_hamming(
    queries: np.ndarray, refs: np.ndarray, chunk: int = 1 << 14
) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of the closest reference hash and that distance (exact).

    A full scan, chunked over references so the (queries x chunk) uint64 XOR block stays under
    ~64 MB whatever the number of references. 2 x 256 queries against 1.33M references take
    ~2.5 s on one core: the filter uses HammingIndex, which only scans near candidates.
    """
    chunk = max(256, min(chunk, (1 << 23) // max(1, len(queries))))
    queries = np.asarray(queries, dtype=np.uint64)
    refs = np.asarray(refs, dtype=np.uint64)
    best_dist = np.full(len(queries), 255, dtype=np.uint8)
    best_idx = np.full(len(queries), -1, dtype=np.int64)
    if len(refs) == 0 or len(queries) == 0:
        return best_idx, best_dist
    for start in range(0, len(refs), chunk):
        dist = hamming_matrix(queries, refs[start : start + chunk])
        arg = dist.argmin(axis=1)
        low = dist[np.arange(len(queries)), arg]
        better = low < best_dist
        best_dist[better] = low[better]
        best_idx[better] = arg[better] + start
    return best_idx, best_dist


class HammingIndex:
    """Nearest reference hash for every query hash within `radius` bits, without a full scan.

    Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): split the 64 bits into radius+1
    disjoint chunks; two hashes within `radius` bits agree exactly on at least one chunk
    (pigeonhole), so only references sharing a chunk value with the query are compared. For
    1.33M references at radius 4 that is ~1e3 candidates per query instead of 1.33M. Matches
    farther than `radius` may be missed (the filter ignores them anyway); large radii, where
    chunks get too short to prune, fall back to the exact full scan.
    """

    MAX_TABLES = 9  # radius <= 8: chunks of >= 7 bits, still selective

    def __init__(self, hashes: np.ndarray, radius: int) -> None:
        self.hashes = np.asarray(hashes, dtype=np.uint64)
        self.radius = radius
        self.tables: list[tuple[np.uint64, np.uint64, np.ndarray, np.ndarray]] = []
        if radius + 1 > self.MAX_TABLES:
            return
        bounds = np.linspace(0, 64, radius + 2).round().astype(int)
        for lo, hi in pairwise(bounds.tolist()):
            shift, mask = np.uint64(lo), np.uint64((1 << (hi - lo)) - 1)
            keys = (self.hashes >> shift) & mask
            order = np.argsort(keys, kind="stable")
            self.tables.append((shift, mask, keys[order], order))

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index, distance) per query; exact whenever the true nearest is within `radius`."""
        queries = np.asarray(queries, dtype=np.uint64)
        if not self.tables:
            return nearest_hamming(queries, self.hashes)
        spans = []
        for shift, mask, keys, order in self.tables:
            qk = (queries >> shift) & mask
            lo, hi = np.searchsorted(keys, qk, "left"), np.searchsorted(keys, qk, "right")
            spans.append((order, lo, hi))
        best_idx = np.full(len(queries), -1, dtype=np.int64)
        best_dist = np.full(len(queries), 255, dtype=np.uint8)
        for i, q in enumerate(queries):
            parts = [order[lo[i] : hi[i]] for order, lo, hi in spans if hi[i] > lo[i]]
            if not parts:
                continue
            cand = np.concatenate(parts)  # a reference in two tables is counted twice: harmless
            dist = popcount64(np.bitwise_xor(self.hashes[cand], q))
            low = dist.min()
            best_idx[i], best_dist[i] = cand[dist == low].min(), low  # ties: the lowest index
        return best_idx, best_dist
