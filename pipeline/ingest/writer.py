"""Write one planned shard: read its sources, encode samples, write the tar and then its index,
each atomically. Runs as a Ray task or inline; it is a pure function of its arguments."""

from __future__ import annotations

import hashlib
import json

import fsspec

from pipeline.data.manifest import ShardIndex, write_json_atomic
from pipeline.ingest.encode import EncodeSettings, RejectedImage, encode_sample
from pipeline.ingest.plan import ShardPlan
from pipeline.ingest.sources import read_sources
from pipeline.ingest.tarwriter import build_tar
from pipeline.storage import atomic_write


def index_name(shard_name: str) -> str:
    return shard_name.removesuffix(".tar") + ".idx.json"


def existing_index(
    fs: fsspec.AbstractFileSystem, out_dir: str, plan: ShardPlan
) -> ShardIndex | None:
    """The shard's index if the shard is complete and came from this very plan."""
    path = f"{out_dir}/{index_name(plan.name)}"
    try:
        index = ShardIndex.model_validate(json.loads(fs.cat_file(path)))
    except (FileNotFoundError, ValueError):
        return None
    if index.fingerprint != plan.fingerprint or not fs.exists(f"{out_dir}/{plan.name}"):
        return None
    return index


def write_shard(
    plan: ShardPlan,
    out_url: str,
    settings: EncodeSettings,
    class_index: dict[str, int],
    storage_options: dict,
) -> ShardIndex:
    fs, out_dir = fsspec.core.url_to_fs(out_url, **storage_options)
    raw = read_sources([it.source for it in plan.items], storage_options)
    samples, labels, skipped = [], [], []
    for key, item in zip(plan.keys, plan.items, strict=True):
        data = raw[item.source]
        try:
            if isinstance(data, Exception):
                raise RejectedImage(f"unreadable: {type(data).__name__}: {data}")
            label = class_index.get(item.label, -1)
            samples.append((key, encode_sample(data, item.source, label, item.label, settings)))
            labels.append(label)
        except RejectedImage as e:
            skipped.append({"source": item.source, "reason": str(e)})
    tar_bytes, sample_index = build_tar(samples)
    for entry, label in zip(sample_index, labels, strict=True):
        entry.label = label if label >= 0 else None  # the loader needs no .cls read
    atomic_write(fs, f"{out_dir}/{plan.name}", tar_bytes)
    index = ShardIndex(
        shard=plan.name,
        fingerprint=plan.fingerprint,
        sha256=hashlib.sha256(tar_bytes).hexdigest(),
        bytes=len(tar_bytes),
        samples=sample_index,
        skipped=skipped,
    )
    write_json_atomic(fs, f"{out_dir}/{index_name(plan.name)}", index.model_dump())
    return index
