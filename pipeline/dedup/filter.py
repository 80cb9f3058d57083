"""Near-duplicate filter: exact sha256 -> pHash -> descriptor cosine, cheapest stage first.

Each stage sees only the pool images the earlier stages did not remove, and every removal is
recorded as {"key", "source", "match", "score", "stage"} so the filter can be audited:
  exact      identical bytes                                  score 1.0
  phash      Hamming distance <= phash_max_distance            score 1 - distance / 64
             (to the reference's hash or its mirror's)
  embedding  cosine >= embedding_threshold (image or mirror)   score = cosine
             (of descriptors whitened against the reference set)
This module is a pure library: records in (any iterable), results out; shard I/O lives elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field
from tqdm import tqdm

from pipeline.config import Section
from pipeline.dedup import descriptor
from pipeline.dedup.decode import DEFAULT_MAX_PIXELS
from pipeline.dedup.features import (
    DEFAULT_VIEW_SIDE,
    Decoded,
    Record,
    as_record,
    batched,
    decode_batch,
    sha256_digests,
)
from pipeline.dedup.hashing import HammingIndex
from pipeline.dedup.references import ReferenceSet

log = logging.getLogger(__name__)

Stage = Literal["exact", "phash", "embedding"]
STAGES: tuple[Stage, ...] = ("exact", "phash", "embedding")
# Defaults (docs/dedup.md, "Thresholds"), chosen on the benchmark's development seeds 1-3:
# pHash <= 4 of 63 bits: no negative came closer than 14 bits, and if hashes were spread
# uniformly, a query (and its mirror) would land within 4 bits of one of 1.33M references with
# probability 2e-7; within 8 bits it would be 1.3e-3, i.e. 13k false removals per 10M images.
# Cosine >= 0.75 between whitened descriptors (whitening.py; references indexed with crop views
# of side 0.85). Chosen on the development seeds of both photo benchmarks: real photographs
# with hard negatives (smooth photos, illustrations, other crops of the same photo) reach
# precision 0.976 at recall 0.957 there, against 0.945 / 0.917 for raw cosines at 0.90
# (docs/dedup.md, "Whitening"). Whitened cosines are lower for everyone, copies included.
DEFAULT_PHASH_MAX_DISTANCE = 4
DEFAULT_EMBEDDING_THRESHOLD = 0.75


class DedupConfig(Section):
    phash_max_distance: int = Field(DEFAULT_PHASH_MAX_DISTANCE, ge=0, le=63)
    embedding_threshold: float = Field(DEFAULT_EMBEDDING_THRESHOLD, gt=0.0, le=1.0)
    view_side: float = Field(DEFAULT_VIEW_SIDE, ge=0.0, lt=1.0)  # 0: no crop views indexed
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)
    batch_size: int = Field(256, ge=1)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)


@dataclass
class BatchResult:
    removed: list[dict]  # one audit dict per removed pool image, in input order
    kept: list[str]  # keys that passed every enabled stage
    undecodable: list[str]  # keys that could not be decoded (checked by the exact stage only)


@dataclass
class FilterReport:
    removed: list[dict] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("pool", *STAGES, "kept", "undecodable"), 0)
    )

    def add(self, batch: BatchResult) -> None:
        self.removed += batch.removed
        self.undecodable += batch.undecodable
        self.counts["pool"] += len(batch.removed) + len(batch.kept) + len(batch.undecodable)
        self.counts["kept"] += len(batch.kept)
        self.counts["undecodable"] += len(batch.undecodable)
        for r in batch.removed:
            self.counts[r["stage"]] += 1

    def summary(self) -> str:
        c = self.counts
        return (
            f"dedup: {c['pool']} pool images, removed {c['exact']} exact + {c['phash']} phash"
            f" + {c['embedding']} embedding, kept {c['kept']}, undecodable {c['undecodable']}"
        )


class DedupFilter:
    """Checks pool records against a ReferenceSet, one batch at a time."""

    def __init__(self, references: ReferenceSet, config: DedupConfig | None = None) -> None:
        self.refs = references
        self.config = config or DedupConfig()
        self._hamming: HammingIndex | None = None

    def _hamming_index(self) -> HammingIndex:
        # Built on first use and rebuilt if the radius changed: its tables depend on it.
        radius = self.config.phash_max_distance
        if self._hamming is None or self._hamming.radius != radius:
            self._hamming = HammingIndex(self.refs.phash_valid, radius)
        return self._hamming

    def filter_batch(self, records: Sequence[Record | tuple]) -> BatchResult:
        recs = [as_record(r) for r in records]
        stages = set(self.config.stages)
        found: dict[int, tuple[int, float, Stage]] = {}  # batch position -> (ref row, score, stage)
        todo = list(range(len(recs)))
        if "exact" in stages and recs:
            rows = self.refs.lookup_sha256(sha256_digests(recs))
            found.update({i: (int(rows[i]), 1.0, "exact") for i in np.flatnonzero(rows >= 0)})
            todo = [i for i in todo if rows[i] < 0]
        bad: list[int] = []
        if stages & {"phash", "embedding"} and todo:
            decoded = decode_batch([recs[i] for i in todo], self.config.max_pixels)
            bad = [todo[j] for j in decoded.errors]
            positions = np.array([todo[j] for j in decoded.rows], dtype=np.int64)
            alive = np.ones(len(positions), dtype=bool)
            if "phash" in stages:
                alive &= ~self._phash_stage(decoded, positions, found)
            if "embedding" in stages and alive.any():
                self._embedding_stage(decoded.thumbs[alive], positions[alive], found)
        removed = [self._audit(recs[i], *found[i]) for i in sorted(found)]
        skip = set(found) | set(bad)
        kept = [recs[i].key for i in range(len(recs)) if i not in skip]
        return BatchResult(removed, kept, [recs[i].key for i in sorted(bad)])

    def _phash_stage(self, decoded: Decoded, positions: np.ndarray, found: dict) -> np.ndarray:
        hit = np.zeros(len(positions), dtype=bool)
        if len(self.refs.phash_valid) == 0 or len(positions) == 0:
            return hit
        n = len(positions)
        idx, dist = self._hamming_index().nearest(
            np.concatenate([decoded.phash, decoded.phash_mirror])
        )
        mirrored = dist[n:] < dist[:n]
        dist = np.where(mirrored, dist[n:], dist[:n]).astype(np.int64)
        idx = np.where(mirrored, idx[n:], idx[:n])
        hit = decoded.phash_ok & (dist <= self.config.phash_max_distance)
        for j in np.flatnonzero(hit):
            row = int(self.refs.phash_rows[idx[j]])
            found[int(positions[j])] = (row, 1.0 - dist[j] / 64.0, "phash")
        return hit

    def _embedding_stage(self, thumbs: np.ndarray, positions: np.ndarray, found: dict) -> None:
        vectors = descriptor.describe(thumbs)
        scores, rows = self.refs.index.search(np.concatenate([vectors, descriptor.mirror(vectors)]))
        n = len(positions)
        mirrored = scores[n:, 0] > scores[:n, 0]
        score = np.where(mirrored, scores[n:, 0], scores[:n, 0])
        row = np.where(mirrored, rows[n:, 0], rows[:n, 0])
        for j in np.flatnonzero(score >= self.config.embedding_threshold):
            # float16 storage can push a self-match a hair past 1.
            found[int(positions[j])] = (int(row[j]), min(float(score[j]), 1.0), "embedding")

    def _audit(self, record: Record, row: int, score: float, stage: Stage) -> dict:
        return {
            "key": record.key,
            "source": record.source,
            "match": self.refs.sources[row],
            "score": float(score),
            "stage": stage,
        }

    def iter_batches(self, records: Iterable[Record | tuple]) -> Iterator[BatchResult]:
        for chunk in batched(records, self.config.batch_size):
            yield self.filter_batch(chunk)

    def run(self, records: Iterable[Record | tuple], progress: bool = False) -> FilterReport:
        report = FilterReport()
        with tqdm(desc="dedup", unit="img", disable=not progress) as bar:
            for batch in self.iter_batches(records):
                report.add(batch)
                bar.update(len(batch.removed) + len(batch.kept) + len(batch.undecodable))
        return report


def deduplicate(
    references: Iterable[Record | tuple],
    pool: Iterable[Record | tuple],
    config: DedupConfig | None = None,
    progress: bool = False,
) -> FilterReport:
    """Build the reference set from records, then filter the pool against it."""
    config = config or DedupConfig()
    refs = ReferenceSet.build(
        references, config.batch_size, config.max_pixels, progress, config.view_side
    )
    report = DedupFilter(refs, config).run(pool, progress)
    if progress:
        log.info(report.summary())
    return report
