"""Approximate candidates for the reference search: a faiss inverted-file index (IVF) over the
reference vectors, whose candidates the caller re-scores exactly.

At ImageNet scale with five crop views the index holds 8M vectors: exact search costs 8M dot
products per query (~30 queries/s on 2 cores). An IVF partitions the vectors into `nlist`
k-means cells and scans only the `nprobe` cells nearest a query. A near-duplicate sits at
cosine >= 0.9 from its reference, so the two almost always share a cell: the recall that
matters, at the decision threshold, is measured against exact search in `benchmarks/
dedup_index.py`. Vectors in the cells are stored as float16 (faiss's SQfp16), the same precision
as the exact matrix. faiss's own file format (`ivf.faiss`), never pickle; loaded memory-mapped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FILE = "ivf.faiss"
DEFAULT_NPROBE = 16  # benchmarks/dedup_index.py: recall@1 at the threshold against exact search
CANDIDATES = 8  # nearest vectors per query kept for the exact re-scoring
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
        """Train on a seeded sample (k-means), then add every vector in float32 chunks."""
        import faiss

        n, dim = vectors.shape
        nlist = nlist or default_nlist(n)
        index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
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
