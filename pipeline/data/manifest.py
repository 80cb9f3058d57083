"""The shard manifest and per-shard index: the contract between ingest, index, dedup and the
loader.

    <dir>/<prefix>-000000.tar          WebDataset shard: <key>.<img ext>, <key>.cls, <key>.json
    <dir>/<prefix>-000000.idx.json     member offsets of that shard (random access, completeness)
    <dir>/<prefix>.manifest.json       shard list, sample counts, bytes, checksums, class map

Shards indexed in place (`jobs/index.py`) may live elsewhere: the manifest's ``root`` then names
their folder, shard names are relative to it, and the index files sit beside the manifest.
A shard is complete once its index exists (written after the tar); the manifest is written last.
Everything is JSON: nothing read from storage is ever unpickled.
"""

from __future__ import annotations

import json

import fsspec
from pydantic import BaseModel, Field

from pipeline.storage import atomic_write

MANIFEST_FORMAT = "nfscale-shards/1"


class MemberSpan(BaseModel):
    offset: int
    size: int


class SampleIndex(BaseModel):
    key: str
    members: dict[str, MemberSpan]  # extension -> byte span of the member's data in the tar
    label: int | None = None  # class index; None: read the sample's .cls member


class ShardIndex(BaseModel):
    shard: str
    fingerprint: str  # of the plan that produced it: a re-run with other inputs rewrites it
    sha256: str
    bytes: int
    samples: list[SampleIndex]
    skipped: list[dict[str, str]] = Field(default_factory=list)


class ShardRecord(BaseModel):
    name: str
    index: str
    num_samples: int
    bytes: int
    sha256: str


class Manifest(BaseModel):
    format: str = MANIFEST_FORMAT
    prefix: str
    classes: list[str]
    shards: list[ShardRecord]
    root: str | None = None  # folder (URL) of the tars when not beside the manifest
    skipped: list[dict[str, str]] = Field(default_factory=list)
    settings: dict = Field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def shard_sizes(self) -> list[int]:
        return [s.num_samples for s in self.shards]


def manifest_path(directory: str, prefix: str) -> str:
    return f"{directory.rstrip('/')}/{prefix}.manifest.json"


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, payload: dict) -> None:
    atomic_write(fs, path, json.dumps(payload, indent=1, sort_keys=True).encode())


def read_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    try:
        with fsspec.open(url, "r", **(storage_options or {})) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no shard manifest at {url!r}; run ingest first") from None
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(
            f"{url!r} is not a {MANIFEST_FORMAT} manifest (format={data.get('format')!r})"
        )
    return Manifest.model_validate(data)
