"""Records in, per-image features out: sha256 digests, pHashes and descriptors, batch at a time.

The same functions serve the reference side (every feature of every image, once) and the pool
side (each stage computes only what the images that survived the earlier stages need).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import NamedTuple, TypeVar

import numpy as np
from PIL import Image

from pipeline.dedup import descriptor
from pipeline.dedup.decode import DEFAULT_MAX_PIXELS, UndecodableImage, decode_image
from pipeline.dedup.hashing import DCT_SIZE, phash_grey

# A 32x32 thumbnail flatter than this (std in grey levels) has no structure for pHash to encode:
# its bits are JPEG noise, and every blank image would "match" every other. Such images skip
# the pHash stage (the descriptor, which is contrast-normalised, still sees them).
MIN_PHASH_STD = 2.0
# JPEGs decode at the smallest DCT scale that still covers this many pixels a side.
DRAFT_SIZE = 2 * descriptor.SIZE
T = TypeVar("T")


class Record(NamedTuple):
    """One image: a unique key, a human-readable source (URL, shard/member) and encoded bytes."""

    key: str
    source: str
    data: bytes


def as_record(item: Record | Sequence | Mapping) -> Record:
    """Accept a Record, a (key, source, data) tuple or a mapping with those three names."""
    if isinstance(item, Record):
        return item
    if isinstance(item, Mapping):
        return Record(str(item["key"]), str(item["source"]), bytes(item["data"]))
    key, source, data = item
    return Record(str(key), str(source), bytes(data))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """itertools.batched (Python 3.12+) for 3.11: consecutive lists of up to `size` items."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def sha256_digests(records: Sequence[Record]) -> np.ndarray:
    """(n, 32) uint8 sha256 digests of the encoded bytes."""
    out = np.empty((len(records), 32), dtype=np.uint8)
    for i, r in enumerate(records):
        out[i] = np.frombuffer(hashlib.sha256(r.data).digest(), dtype=np.uint8)
    return out


class Decoded(NamedTuple):
    rows: list[int]  # positions (in the input batch) that decoded
    thumbs: np.ndarray  # (len(rows), SIZE, SIZE, 3) uint8, the descriptor's input
    phash: np.ndarray  # (len(rows),) uint64
    phash_mirror: np.ndarray  # (len(rows),) uint64: pHash of the left-right mirror image
    phash_ok: np.ndarray  # (len(rows),) bool: enough contrast for pHash to mean anything
    errors: dict[int, str]  # position -> why it did not decode


def decode_batch(records: Sequence[Record], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode every record once and keep only the small derived images both stages need."""
    rows: list[int] = []
    thumbs: list[np.ndarray] = []
    hashes: list[tuple[int, int]] = []
    flat: list[bool] = []
    errors: dict[int, str] = {}
    for i, record in enumerate(records):
        try:
            image = decode_image(record.data, max_pixels=max_pixels, draft=DRAFT_SIZE)
        except UndecodableImage as e:
            errors[i] = str(e)
            continue
        grey = image.convert("L").resize((DCT_SIZE, DCT_SIZE), Image.Resampling.LANCZOS)
        grey = np.asarray(grey, dtype=np.float64)
        rows.append(i)
        thumbs.append(descriptor.prepare(image))
        hashes.append(phash_grey(grey))
        flat.append(bool(grey.std() < MIN_PHASH_STD))
    pairs = np.array(hashes, dtype=np.uint64).reshape(-1, 2)
    return Decoded(
        rows=rows,
        thumbs=np.stack(thumbs) if thumbs else np.zeros((0, *descriptor.SHAPE), np.uint8),
        phash=pairs[:, 0].copy(),
        phash_mirror=pairs[:, 1].copy(),
        phash_ok=~np.array(flat, dtype=bool),
        errors=errors,
    )
