"""Copy-detection descriptor: oriented-energy grid ("GIST") plus a coarse luminance layout.

Chosen by measurement against a seeded random CNN with GeM pooling, whitened tiny images and
gradient-orientation pyramids (docs/dedup.md has the numbers). Nothing is learned or downloaded,
so the same bytes give the same 256-d float32 vector on any machine.

Recipe, per image:
  1. resize to 64x64 (aspect ignored: a resized copy maps to the same grid);
  2. luminance Y = ITU-R 601 luma (PIL's "L"), standardised per image (brightness, contrast and
     any greyscale/colour change drop out) and clipped at +-1 sigma (caps overlaid text);
  3. oriented energy: |Y * g| for one-sided log-Gabor filters at 3 scales x 5 orientations,
     averaged over a 4x4 grid of cells, square-rooted, centred, L2-normalised (240 values);
  4. layout: Y averaged over a 4x4 grid, centred, L2-normalised, weighted 0.5 (16 values);
  5. concatenate and L2-normalise: cosine similarity = inner product.
Colour is left out: greyscale and hue-shifted copies must match, so chroma could only carry a
small weight, and at weight 0.3 it changed nothing measurable (benchmarks/dedup_descriptors.py).

A mirrored image's descriptor is a fixed permutation of the original's (`mirror`), so flipped
copies are found by also searching with the permuted query, without describing the image twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import fft

SIZE = 64  # working resolution; copies resized down to ~100 px keep this much detail
SHAPE = (SIZE, SIZE, 3)
VERSION = "gist-layout-v1"  # stored with reference sets: vectors from another recipe don't mix
SCALES = (1 / 4, 1 / 8, 1 / 16)  # filter centre frequencies, cycles/pixel (16, 8, 4 per image)
ORIENTATIONS = 5
GRID = 4  # energy pooled over GRID x GRID cells
LAYOUT_GRID = 4
LAYOUT_WEIGHT = 0.5
CLIP_SIGMA = 1.0
RADIAL_BANDWIDTH = 0.6  # log-Gaussian sigma in log-frequency (about 1.4 octaves FWHM)
ENERGY_DIM = len(SCALES) * ORIENTATIONS * GRID * GRID
DIM = ENERGY_DIM + LAYOUT_GRID * LAYOUT_GRID  # 256
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@lru_cache(maxsize=1)
def filter_bank() -> np.ndarray:
    """(scales*orientations, SIZE, SIZE) float32 frequency responses, mirror-symmetric as a set."""
    fy = np.fft.fftfreq(SIZE)[:, None]
    fx = np.fft.fftfreq(SIZE)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0  # the DC term is zeroed below; avoid log(0)
    angle = np.arctan2(fy, fx)
    angular_sigma = np.pi / ORIENTATIONS / 1.2
    bank = []
    for f0 in SCALES:
        radial = np.exp(-(np.log(radius / f0) ** 2) / (2 * RADIAL_BANDWIDTH**2))
        for o in range(ORIENTATIONS):
            # One-sided in angle (an analytic filter): |response| is the local edge energy.
            delta = np.angle(np.exp(1j * (angle - o * np.pi / ORIENTATIONS)))
            bank.append(radial * np.exp(-(delta**2) / (2 * angular_sigma**2)))
    bank = np.stack(bank)
    bank[:, 0, 0] = 0.0
    # The Nyquist row/column has no mirror partner on an even grid; dropping it keeps `mirror` exact.
    bank[:, SIZE // 2, :] = 0.0
    bank[:, :, SIZE // 2] = 0.0
    return bank.astype(np.float32)


@lru_cache(maxsize=1)
def mirror_permutation() -> np.ndarray:
    """Index array p with describe(mirrored image) == describe(image)[:, p]."""
    energy = np.arange(ENERGY_DIM).reshape(len(SCALES), ORIENTATIONS, GRID, GRID)
    # Mirroring maps orientation angle a to pi - a: index o -> -o mod ORIENTATIONS.
    energy = energy[:, (-np.arange(ORIENTATIONS)) % ORIENTATIONS][..., ::-1]
    layout = np.arange(LAYOUT_GRID * LAYOUT_GRID).reshape(LAYOUT_GRID, LAYOUT_GRID)[:, ::-1]
    return np.concatenate([energy.ravel(), ENERGY_DIM + layout.ravel()])


def mirror(vectors: np.ndarray) -> np.ndarray:
    """Descriptors of the left-right mirrored images, from the descriptors alone."""
    return np.ascontiguousarray(vectors[:, mirror_permutation()])


def prepare(image: Image.Image) -> np.ndarray:
    """A decoded image -> the (SIZE, SIZE, 3) uint8 array the descriptor reads."""
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        # PIL's bilinear widens its support when shrinking (anti-aliased) and is left-right
        # symmetric; `reducing_gap` would be ~20% faster but breaks that symmetry.
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def describe(
    images: Sequence[Image.Image] | np.ndarray, batch_size: int = 128, workers: int = 1
) -> np.ndarray:
    """(N, DIM) float32 L2-normalised descriptors of PIL images or a uint8 (N, H, W[, 3]) batch."""
    if isinstance(images, np.ndarray):
        batch = _as_batch(images)
    else:
        batch = np.stack([prepare(im) for im in images]) if len(images) else _empty()
    out = np.empty((len(batch), DIM), dtype=np.float32)
    for start in range(0, len(batch), batch_size):
        out[start : start + batch_size] = _describe_batch(
            batch[start : start + batch_size], workers
        )
    return out


def _empty() -> np.ndarray:
    return np.zeros((0, *SHAPE), dtype=np.uint8)


def _as_batch(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise ValueError(
            f"expected a uint8 (N, H, W) or (N, H, W, 3) batch, got {array.dtype} {array.shape}"
        )
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[1:] == SHAPE:
        return array
    return np.stack([prepare(Image.fromarray(a)) for a in array]) if len(array) else _empty()


def _describe_batch(batch: np.ndarray, workers: int) -> np.ndarray:
    n = len(batch)
    luma = batch.astype(np.float32) @ _LUMA
    luma -= luma.mean(axis=(1, 2), keepdims=True)
    luma /= luma.std(axis=(1, 2), keepdims=True) + 1e-3  # flat images stay ~0, not noise x 1e6
    np.clip(luma, -CLIP_SIGMA, CLIP_SIGMA, out=luma)

    spectrum = fft.fft2(luma, workers=workers)[:, None] * filter_bank()[None]
    energy = np.abs(fft.ifft2(spectrum, workers=workers))  # (n, channels, SIZE, SIZE)
    cell = SIZE // GRID
    pooled = energy.reshape(n, -1, GRID, cell, GRID, cell).mean(axis=(3, 5))
    pooled = np.sqrt(pooled).reshape(n, -1)
    pooled -= pooled.mean(axis=1, keepdims=True)

    cell = SIZE // LAYOUT_GRID
    layout = luma.reshape(n, LAYOUT_GRID, cell, LAYOUT_GRID, cell).mean(axis=(2, 4)).reshape(n, -1)
    layout -= layout.mean(axis=1, keepdims=True)

    vectors = np.concatenate([_l2(pooled), LAYOUT_WEIGHT * _l2(layout)], axis=1)
    return _l2(vectors).astype(np.float32)


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
