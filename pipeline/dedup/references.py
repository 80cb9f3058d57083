"""The reference side of the filter: every reference image's digest, pHash and descriptor.

Built once (for ImageNet: 1.33M images, a one-off job) and saved, then loaded by every pool
worker. On disk, under one directory (local path or fsspec URL), nothing pickled:
  index/vectors.safetensors, index/keys.json   the ReferenceIndex (descriptors, keys)
  hashes.safetensors                          sha256 (n, 32) uint8, pHash bits, pHash validity
  references.json                             sources, counts, descriptor version
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from pipeline.dedup import descriptor, whitening
from pipeline.dedup.decode import DEFAULT_MAX_PIXELS
from pipeline.dedup.features import (
    DEFAULT_VIEW_SIDE,
    Record,
    as_record,
    batched,
    decode_batch,
    sha256_digests,
)
from pipeline.dedup.index import ReferenceIndex

log = logging.getLogger(__name__)

# What the stored vectors are: descriptors of this recipe, whitened against the reference set.
VECTORS_VERSION = f"{descriptor.VERSION}+{whitening.VERSION}"


@dataclass
class ReferenceSet:
    sources: list[str]
    sha256: np.ndarray  # (n, 32) uint8
    phash: np.ndarray  # (n,) uint64
    phash_ok: np.ndarray  # (n,) bool; False for undecodable or flat images
    index: ReferenceIndex  # undecodable references hold zero vectors: cosine 0, never a match
    undecodable: int
    view_side: float = 0.0  # > 0: the index also holds crop views of each reference

    def __post_init__(self) -> None:
        # Exact lookup: sort the first 8 digest bytes as uint64, binary-search, then confirm all
        # 32 bytes. 1.33M digests cost 10 MB this way instead of ~200 MB as a dict of bytes.
        self._prefix = self.sha256[:, :8].copy().view(np.uint64).ravel()
        self._order = np.argsort(self._prefix, kind="stable")
        self._sorted = self._prefix[self._order]
        # pHash search runs only over references whose hash carries information.
        self.phash_rows = np.flatnonzero(self.phash_ok)
        self.phash_valid = self.phash[self.phash_rows]

    @property
    def keys(self) -> list[str]:
        return self.index.keys

    def __len__(self) -> int:
        return len(self.sources)

    def lookup_sha256(self, digests: np.ndarray) -> np.ndarray:
        """Row of a reference with the same sha256 for each digest, or -1."""
        if len(self._sorted) == 0:
            return np.full(len(digests), -1, dtype=np.int64)
        prefix = np.ascontiguousarray(digests[:, :8]).view(np.uint64).ravel()
        pos = np.minimum(np.searchsorted(self._sorted, prefix), len(self._sorted) - 1)
        rows = self._order[pos]
        hit = (self._sorted[pos] == prefix) & (self.sha256[rows] == digests).all(axis=1)
        return np.where(hit, rows, -1).astype(np.int64)

    @classmethod
    def build(
        cls,
        records: Iterable[Record | tuple],
        batch_size: int = 256,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        view_side: float = DEFAULT_VIEW_SIDE,
        whiten: bool = True,
    ) -> ReferenceSet:
        """view_side > 0 adds five crop views per reference (features.crop_views) to the index.
        whiten=False leaves the vectors raw: a part to `concat`, which whitens the whole set."""
        keys: list[str] = []
        sources: list[str] = []
        digests, hashes, ok, vectors, owners = [], [], [], [], []
        undecodable = 0
        seen: set[str] = set()
        bar = tqdm(desc="reference features", unit="img", disable=not progress)
        for chunk in batched((as_record(r) for r in records), batch_size):
            decoded = decode_batch(chunk, max_pixels, view_side)
            undecodable += len(decoded.errors)
            n = len(chunk)
            h = np.zeros(n, dtype=np.uint64)
            good = np.zeros(n, dtype=bool)
            v = np.zeros((n, descriptor.DIM), dtype=np.float32)
            h[decoded.rows] = decoded.phash
            good[decoded.rows] = decoded.phash_ok
            v[decoded.rows] = descriptor.describe(decoded.thumbs)
            # Views of undecodable references are left out: they could never match anyway.
            view_vectors = descriptor.describe(decoded.views.reshape(-1, *descriptor.SHAPE))
            view_owners = np.repeat(np.asarray(decoded.rows, np.int64), decoded.views.shape[1])
            for r in chunk:  # fail now, not after an hour of decoding
                if r.key in seen:
                    raise ValueError(f"reference key {r.key!r} appears twice; keys must be unique")
                seen.add(r.key)
            keys += [r.key for r in chunk]
            sources += [r.source for r in chunk]
            digests.append(sha256_digests(chunk))
            hashes.append(h)
            ok.append(good)
            # float16 now: halves the build's peak
            vectors += [torch.from_numpy(v).half(), torch.from_numpy(view_vectors).half()]
            owners += [np.arange(n) + len(keys) - n, view_owners + len(keys) - n]
            bar.update(n)
        bar.close()
        if progress:
            log.info(f"reference set: {len(keys)} images, {undecodable} undecodable")
        out = cls(
            sources=sources,
            sha256=_cat(digests, (0, 32), np.uint8),
            phash=_cat(hashes, (0,), np.uint64),
            phash_ok=_cat(ok, (0,), bool),
            index=ReferenceIndex(
                torch.cat(vectors) if vectors else torch.zeros(0, descriptor.DIM),
                keys,
                owners=torch.from_numpy(_cat(owners, (0,), np.int64)) if view_side > 0 else None,
            ),
            undecodable=undecodable,
            view_side=view_side,
        )
        if whiten:
            out.index.whiten()
        return out

    @classmethod
    def concat(cls, parts: Sequence[ReferenceSet]) -> ReferenceSet:
        """One set from raw parts built apart (Ray tasks, one per unit, `whiten=False`), in
        order, whitened as a whole: the same set a single build over all their records gives."""
        if not parts:
            raise ValueError("no reference parts to join")
        if any(p.index.whitening is not None for p in parts):
            raise ValueError("join raw parts (build(..., whiten=False)); the join whitens")
        keys = [k for p in parts for k in p.keys]
        if len(set(keys)) != len(keys):
            raise ValueError("a reference key appears in two parts; keys must be unique")
        views = parts[0].view_side
        owners, offset = [], 0
        for p in parts:
            own = p.index.owners if p.index.owners is not None else torch.arange(len(p))
            owners.append(own + offset)
            offset += len(p)
        out = cls(
            sources=[s for p in parts for s in p.sources],
            sha256=_cat([p.sha256 for p in parts], (0, 32), np.uint8),
            phash=_cat([p.phash for p in parts], (0,), np.uint64),
            phash_ok=_cat([p.phash_ok for p in parts], (0,), bool),
            index=ReferenceIndex(
                torch.cat([p.index.vectors for p in parts]),
                keys,
                owners=torch.cat(owners) if views > 0 else None,
            ),
            undecodable=sum(p.undecodable for p in parts),
            view_side=views,
        )
        out.index.whiten()
        return out

    def save(self, path: str, storage_options: dict | None = None) -> None:
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        self.index.save(f"{path.rstrip('/')}/index", storage_options)
        tensors = {
            "sha256": torch.from_numpy(self.sha256),
            "phash": torch.from_numpy(self.phash.view(np.int64)),  # same 64 bits, signed type
            "phash_ok": torch.from_numpy(self.phash_ok.astype(np.uint8)),
        }
        with fs.open(f"{root}/hashes.safetensors", "wb") as f:
            f.write(save_safetensors(tensors))
        meta = {
            "descriptor": VECTORS_VERSION,
            "count": len(self),
            "undecodable": self.undecodable,
            "view_side": self.view_side,
            "sources": self.sources,
        }
        with fs.open(f"{root}/references.json", "w") as f:
            json.dump(meta, f)

    @classmethod
    def load(
        cls, path: str, device: str = "cpu", storage_options: dict | None = None
    ) -> ReferenceSet:
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        with fs.open(f"{root}/references.json") as f:
            meta = json.load(f)
        if meta.get("descriptor") != VECTORS_VERSION:
            raise ValueError(
                f"{path!r} was built with descriptor {meta.get('descriptor')!r}, this code computes"
                f" {VECTORS_VERSION!r}; rebuild the reference set"
            )
        with fs.open(f"{root}/hashes.safetensors", "rb") as f:
            tensors = load_safetensors(f.read())
        index = ReferenceIndex.load(f"{path.rstrip('/')}/index", device, storage_options)
        out = cls(
            sources=list(meta["sources"]),
            sha256=tensors["sha256"].numpy(),
            phash=tensors["phash"].numpy().view(np.uint64),
            phash_ok=tensors["phash_ok"].numpy().astype(bool),
            index=index,
            undecodable=int(meta["undecodable"]),
            view_side=float(meta.get("view_side", 0.0)),
        )
        if not (len(out.sources) == len(index.keys) == len(out.sha256) == len(out.phash)):
            raise ValueError(f"{path!r} is inconsistent: its files list different reference counts")
        return out


def _cat(parts: Sequence[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=dtype)
