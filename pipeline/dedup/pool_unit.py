"""One pool unit through the filter: its kept shard, its part of the audit, its counts.

    <out>/<prefix>-000017.tar, .idx.json     the unit's kept images (ingest's encoding and index)
    <out>/audit/<prefix>-000017.jsonl        one {"key", "source", "match", "score", "stage"} per removal
    <out>/audit/<prefix>-000017.json         counts + fingerprint: written last, it marks the unit done

Each file is written atomically; a unit whose marker holds this run's fingerprint is skipped by
a re-run, and a unit without one is redone from scratch. Kept images keep the pool's class
indices (`Labels`), so removals never shift a class.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import fsspec

from pipeline.config import UserError
from pipeline.data.manifest import ShardIndex, write_json_atomic
from pipeline.data.records import Record as SourceRecord
from pipeline.dedup.features import Record, batched
from pipeline.dedup.filter import DedupFilter
from pipeline.dedup.units import Unit, unit_records
from pipeline.ingest.encode import EncodeSettings, RejectedImage, encode_sample
from pipeline.ingest.tarwriter import build_tar
from pipeline.storage import atomic_write


@dataclass(frozen=True)
class Labels:
    """How a pool record's label becomes a class index: by name (folders; shards with a class
    map) or as the integer a shard's .cls holds."""

    classes: tuple[str, ...] | None  # None: integer labels, classes = str(0..max) at the merge

    def index(self, label: str, where: str) -> int:
        if self.classes is not None and label in self.classes:
            return self.classes.index(label)
        if label.isdigit() and (self.classes is None or int(label) < len(self.classes)):
            return int(label)
        raise UserError(f"{where} has label {label!r}, which the pool's class map does not"
                        " name; expected a class name or index of the pool")  # fmt: skip


def names(prefix: str, unit: Unit) -> dict[str, str]:
    stem = f"{prefix}-{unit.number:06d}"
    return {"tar": f"{stem}.tar", "index": f"{stem}.idx.json",
            "audit": f"audit/{stem}.jsonl", "marker": f"audit/{stem}.json"}  # fmt: skip


def unit_fingerprint(unit: Unit, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(f"\n{unit.number}\t{unit.url}\t{len(unit.paths)}".encode())
    for p in unit.paths:
        h.update(f"\n{p}".encode())
    return h.hexdigest()


def done(out_url: str, prefix: str, unit: Unit, fingerprint: str, opts: dict) -> dict | None:
    """The unit's result if a previous run finished it with these settings."""
    fs, out = fsspec.core.url_to_fs(out_url, **opts)
    try:
        result = json.loads(fs.cat_file(f"{out}/{names(prefix, unit)['marker']}"))
    except (FileNotFoundError, ValueError):
        return None
    return result if result.get("fingerprint") == fingerprint else None


def filter_unit(
    unit: Unit,
    filt: DedupFilter,
    labels: Labels,
    out_url: str,
    prefix: str,
    fingerprint: str,
    opts: dict,
    encode: EncodeSettings | None = None,
) -> dict:
    """Filter one unit and write its outputs; returns its marker (counts, kept shard record)."""
    encode = encode or EncodeSettings()
    samples, kept_labels, skipped, removed = [], [], [], []
    counts = dict.fromkeys(("pool", "exact", "phash", "embedding", "kept", "undecodable"), 0)
    for batch in batched(unit_records(unit, opts), filt.config.batch_size):
        result = filt.filter_batch([Record(r.key, r.source, r.data) for r in batch])
        keep = set(result.kept)
        removed += result.removed
        counts["pool"] += len(batch)
        for r in result.removed:
            counts[r["stage"]] += 1
        counts["undecodable"] += len(result.undecodable)
        origin = {r.key: r.origin for r in batch}
        skipped += [{"source": origin[k], "reason": "undecodable"} for k in result.undecodable]
        for rec in batch:
            if rec.key in keep:
                _encode(rec, unit, labels, encode, samples, kept_labels, skipped)
    counts["kept"] = len(samples)
    return _write(unit, out_url, prefix, fingerprint, opts, samples, kept_labels, skipped,
                  removed, counts)  # fmt: skip


def _encode(rec: SourceRecord, unit, labels, encode, samples, kept_labels, skipped) -> None:
    label = labels.index(rec.label, f"{rec.origin}")
    try:
        members = encode_sample(rec.data, rec.origin, label, rec.label, encode)
    except RejectedImage as e:
        skipped.append({"source": rec.origin, "reason": str(e)})
        return
    samples.append((f"{unit.number:06d}-{len(samples):07d}", members))
    kept_labels.append(label)


def _write(unit, out_url, prefix, fingerprint, opts, samples, kept_labels, skipped, removed,
           counts) -> dict:  # fmt: skip
    fs, out = fsspec.core.url_to_fs(out_url, **opts)
    fs.makedirs(f"{out}/audit", exist_ok=True)
    files = names(prefix, unit)
    tar, entries = build_tar(samples)
    for entry, label in zip(entries, kept_labels, strict=True):
        entry.label = label
    atomic_write(fs, f"{out}/{files['tar']}", tar)
    index = ShardIndex(shard=files["tar"], fingerprint=fingerprint,
                       sha256=hashlib.sha256(tar).hexdigest(), bytes=len(tar), samples=entries,
                       skipped=skipped)  # fmt: skip
    write_json_atomic(fs, f"{out}/{files['index']}", index.model_dump())
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in removed)
    atomic_write(fs, f"{out}/{files['audit']}", lines.encode())
    marker = {"fingerprint": fingerprint, "unit": unit.number, "counts": counts,
              "record": {"name": files["tar"], "index": files["index"], "num_samples": len(entries),
                         "bytes": len(tar), "sha256": index.sha256},
              "max_label": max(kept_labels, default=-1), "skipped": len(skipped)}  # fmt: skip
    write_json_atomic(fs, f"{out}/{files['marker']}", marker)
    return marker
