"""Centring and whitening of descriptors against a background sample (the reference set itself).

Raw descriptors of unrelated low-texture images (sky, water, gradients, flat illustrations) all
sit near one point: their cosines are high, and a copy's cosine is not much higher. Whitening
subtracts the background mean and scales each principal direction by (shrunk variance)^-power,
so directions every image shares weigh little and the ones that tell images apart weigh more
(SSCD, Pizzi et al. 2022, whiten against a background set the same way). The background is the
reference set: for the pool filter it is the distribution to tell apart (ImageNet), it is on
hand when the index is built, and it needs no extra data. Shrinkage keeps the transform well
conditioned, and near plain centring for small reference sets (docs/dedup.md, "Whitening").

The fit is mirror-closed (every vector and its mirror), so whitening commutes with
`descriptor.mirror`. Zero vectors (undecodable or flat images) stay zero: they never match.
Everything is float64 and deterministic, so a Ray-built index equals a serial one bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.dedup import descriptor

VERSION = "refs-mirror-shrink0.5-pow0.5"  # stored with reference sets, with descriptor.VERSION
# Covariance shrunk towards its mean eigenvalue: (1 - s) C + s mean(eig) I, with s = MIN_SHRINK
# (measured best on the benchmarks' reference sets) once the background holds FULL_SAMPLE * dim
# vectors (mirrors included), more for smaller ones (s -> 1: centring only).
MIN_SHRINK = 0.5
FULL_SAMPLE = 16
POWER = 0.5  # 0.5: full whitening (before shrinkage); 0: centring only
SAMPLE = 1 << 18  # background vectors used for the fit (of 8M for ImageNet with crop views)
_CHUNK = 1 << 16
_ZERO = 1e-6  # a row with a smaller norm is "no descriptor"


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray  # (dim,) float64
    matrix: np.ndarray  # (dim, dim) float64, symmetric

    @classmethod
    def fit(
        cls, vectors: torch.Tensor | np.ndarray, order: np.ndarray | None = None, seed: int = 0
    ) -> Whitening:
        """From (n, dim) descriptors (any float dtype); a seeded sample of `SAMPLE` rows.

        `order`: the rows in a canonical order (by reference, then view), so that a set joined
        from parts, whose rows are grouped differently, sums in the same order: same bits."""
        x = torch.as_tensor(vectors)
        dim = x.shape[1]
        n = x.shape[0]
        order = np.arange(n) if order is None else np.asarray(order)
        rows = order if n <= SAMPLE else order[
            np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))
        ]  # fmt: skip
        perm = descriptor.mirror_permutation() if dim == descriptor.DIM else np.arange(dim)

        def blocks():  # the sample and its mirror, zero rows left out
            for start in range(0, len(rows), _CHUNK):
                block = x[torch.as_tensor(rows[start : start + _CHUNK])].double().numpy()
                block = block[np.linalg.norm(block, axis=1) >= _ZERO]
                yield from (block, block[:, perm])

        total, outer, count = np.zeros(dim), np.zeros((dim, dim)), 0
        for part in blocks():
            total += part.sum(axis=0)
            outer += part.T @ part
            count += len(part)
        if count < 2:
            return cls(np.zeros(dim), np.eye(dim))
        mean = total / count
        cov = outer / count - np.outer(mean, mean)
        cov = (cov + cov.T) / 2
        level = np.trace(cov) / dim
        if level <= 0:  # every background vector the same: centring only
            return cls(mean, np.eye(dim))
        # A covariance from few vectors (a handful of references) is mostly noise: shrink it
        # towards centring alone, fully at none, to MIN_SHRINK from FULL_SAMPLE * dim vectors on.
        shrink = max(MIN_SHRINK, 1.0 - count / (FULL_SAMPLE * dim))
        eigenvalues, eigenvectors = np.linalg.eigh(
            (1 - shrink) * cov + shrink * level * np.eye(dim)
        )
        scale = np.maximum(eigenvalues, 1e-12 * level) ** -POWER
        return cls(mean, (eigenvectors * scale) @ eigenvectors.T)

    def apply(self, vectors: np.ndarray | torch.Tensor) -> np.ndarray:
        """(n, dim) float32 unit vectors (zero rows stay zero); inner product = cosine."""
        x = np.asarray(vectors, dtype=np.float64)
        zero = np.linalg.norm(x, axis=1) < _ZERO
        y = (x - self.mean) @ self.matrix
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        y[zero] = 0.0
        return y.astype(np.float32)

    def apply_(self, vectors: torch.Tensor) -> None:
        """Whiten a (float16) matrix in place, chunk by chunk: no second copy of 8M vectors."""
        for start in range(0, vectors.shape[0], _CHUNK):
            block = vectors[start : start + _CHUNK]
            block.copy_(torch.from_numpy(self.apply(block.float().numpy())))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"whiten_mean": torch.from_numpy(self.mean), "whiten_matrix": torch.from_numpy(self.matrix)}  # fmt: skip

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Whitening | None:
        if "whiten_mean" not in tensors:
            return None
        return cls(
            tensors["whiten_mean"].double().numpy(), tensors["whiten_matrix"].double().numpy()
        )
