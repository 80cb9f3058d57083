"""Approximate candidates for the reference search: a faiss inverted-file index (IVF) over the
reference vectors, whose candidates the caller re-scores exactly.

At ImageNet scale with five crop views the index holds 8M vectors: exact search costs 8M dot
products per query (~30 queries/s on 2 cores). An IVF partitions the vectors into `nlist`
k-means cells and scans only the `nprobe` cells nearest a query. Whitened descriptors are
spread out (that is what whitening is for), so a copy near the 0.75 threshold and its reference
are often in different cells: recall at the threshold is set by the share of cells scanned, and
is measured against exact search in `benchmarks/dedup_scale.py` (DEFAULT_NPROBE). Scanning
many cells is cheap because the cells hold 4-bit product-quantised codes scanned with SIMD
(faiss's "fast scan", PQ64x4fs: 32 bytes a vector, 256 MB for 8M vectors, instead of 4 GB in
float16); their order is only approximate, so the best `CANDIDATES` of them are re-scored
exactly from the float16 rows of the index. faiss's own file format (`ivf.faiss`), never pickle.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FILE = "ivf.faiss"
DEFAULT_NPROBE = 256  # benchmarks/dedup_scale.py: recall@1 at the threshold against exact search
CANDIDATES = 32  # nearest codes per query re-scored exactly (recall equals the cells' from ~32)
MIN_VECTORS = 50_000  # below this exact search is cheap and an IVF has too little to train on


def default_nlist(n: int) -> int:
    """~2 sqrt(n) cells: 5.7k for 8M vectors (faiss's guidance, 4-16 sqrt(n), is for billions;
    fewer cells keep the k-means training short on CPUs)."""
    return int(min(8192, max(1, 2 * math.sqrt(n))))


class IVFCandidates:
    def __init__(self, index, nprobe: int = DEFAULT_NPROBE) -> None:
        self.index = index
        self.nprobe = nprobe
        index.nprobe = nprobe

    @classmethod
    def build(
        cls, vectors: torch.Tensor, nlist: int | None = None, seed: int = 0, chunk: int = 1 << 17
    ) -> IVFCandidates:
        """Train on a seeded sample (k-means, then the codebooks), then add every vector in float32
        chunks."""
        import faiss

        n, dim = vectors.shape
        nlist = nlist or default_nlist(n)
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 4}x4fs", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)
        index.cp.seed = seed
        index.train(vectors[np.sort(sample)].float().numpy())
        for start in range(0, n, chunk):
            index.add(vectors[start : start + chunk].float().numpy())
        return cls(index)

    def save(self, path: str) -> None:
        import faiss

        faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, nprobe: int = DEFAULT_NPROBE) -> IVFCandidates:
        import faiss

        return cls(faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), nprobe)

    def candidates(self, queries: np.ndarray, k: int = CANDIDATES) -> np.ndarray:
        """(len(queries), k) vector rows, nearest first; -1 where a probe found fewer."""
        _, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return rows
