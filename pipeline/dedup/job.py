"""The dedup job: reference + pool (folders or shard patterns, any fsspec URL) -> DIR with the kept
pool as shards + manifest, and ``duplicates.jsonl`` (one audit object per removed pool image).

Kept shards go through the ingest writer with the pool's *full* class map (computed before any
removal), so class indices never shift when a class loses samples.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Iterator

import fsspec
from pydantic import Field

from pipeline.config import Section
from pipeline.data.manifest import Manifest, read_manifest
from pipeline.data.records import Record as SourceRecord
from pipeline.data.records import records
from pipeline.dedup.features import DEFAULT_VIEW_SIDE, Record
from pipeline.dedup.filter import (
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_PHASH_MAX_DISTANCE,
    DedupConfig,
    DedupFilter,
    FilterReport,
)
from pipeline.dedup.references import ReferenceSet
from pipeline.ingest.plan import class_names
from pipeline.ingest.run import IngestConfig, write_dataset
from pipeline.ingest.sources import Item, expand_shards
from pipeline.storage import atomic_write


class DedupJobConfig(Section):
    reference: str = Field(description="reference images: folder or shard pattern (fsspec URL)")
    pool: str = Field(description="pool to filter: folder or shard pattern (fsspec URL)")
    out: str = Field(description="output folder: kept shards, manifest, duplicates.jsonl")
    threshold: float = Field(
        DEFAULT_EMBEDDING_THRESHOLD, gt=0, le=1, description="embedding cosine"
    )
    phash_max_distance: int = Field(DEFAULT_PHASH_MAX_DISTANCE, ge=0, le=63)
    view_side: float = Field(
        DEFAULT_VIEW_SIDE, ge=0, lt=1, description="side of the reference crop views; 0: none"
    )
    prefix: str = Field("pool", pattern=r"^[A-Za-z0-9_.-]+$")
    shard_bytes: int = Field(256 * 2**20, ge=1024)
    storage_options: dict = Field(default_factory=dict)


def _dedup_records(
    source: Iterator[SourceRecord], seen: list[SourceRecord] | None
) -> Iterator[Record]:
    for rec in source:
        if seen is not None:  # keep what is needed to re-read kept samples, not their bytes
            seen.append(SourceRecord(rec.key, rec.source, b"", rec.label, rec.origin))
        yield Record(rec.key, rec.source, rec.data)


def _manifest_classes(pool: str, opts: dict) -> list[str] | None:
    """Shards carry integer labels; when they sit beside one ingest manifest, its class names
    keep the kept pool's class map the same as the source's (and its sibling splits')."""
    if not (pool.endswith(".tar") or "*" in pool or "{" in pool):
        return None
    fs, path = fsspec.core.url_to_fs(pool, **opts)
    shards = {posixpath.basename(u) for u in expand_shards(pool, opts)}
    for found in fs.glob(f"{posixpath.dirname(path)}/*.manifest.json"):
        manifest = read_manifest(fs.unstrip_protocol(found), opts)
        if shards <= {s.name for s in manifest.shards}:  # the manifest of exactly these shards
            return manifest.classes
    return None


def run_dedup(cfg: DedupJobConfig, progress: bool = True) -> tuple[FilterReport, Manifest]:
    start = time.perf_counter()
    opts = cfg.storage_options
    ref_records = records(cfg.reference, opts)  # validates both inputs before any heavy work
    pool_records = records(cfg.pool, opts)
    refs = ReferenceSet.build(
        _dedup_records(ref_records, None), progress=progress, view_side=cfg.view_side
    )
    pool: list[SourceRecord] = []
    filt = DedupFilter(
        refs,
        DedupConfig(phash_max_distance=cfg.phash_max_distance, embedding_threshold=cfg.threshold),
    )
    report = filt.run(_dedup_records(pool_records, pool), progress=progress)

    dropped = {r["key"] for r in report.removed} | set(report.undecodable)
    names = _manifest_classes(cfg.pool, opts)

    def item(r: SourceRecord) -> Item:
        if names and r.label.isdigit() and int(r.label) < len(names):
            return Item(r.origin, names[int(r.label)], 0)
        return Item(r.origin, r.label, 0)  # no manifest, or a label it does not name

    kept = [item(r) for r in pool if r.key not in dropped]
    manifest = write_dataset(
        kept,
        names or class_names([item(r) for r in pool]),
        IngestConfig(input=cfg.pool, output=cfg.out, prefix=cfg.prefix, shard_bytes=cfg.shard_bytes,
                     parallel=False, storage_options=opts),
        progress=progress,
    )  # fmt: skip
    fs, out_dir = fsspec.core.url_to_fs(cfg.out, **opts)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in report.removed)
    atomic_write(fs, f"{out_dir}/duplicates.jsonl", lines.encode())
    if progress:
        print(f"{report.summary()} in {time.perf_counter() - start:.0f}s -> {cfg.out}")
    return report, manifest
