"""Stream (key, source, bytes, label) records from an image folder or WebDataset shards: the
input side of dedup, where a reference set may be 1.33M images and must never sit in memory."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from pipeline.config import UserError
from pipeline.ingest.sources import IMAGE_EXTENSIONS, expand_shards, image_of, label_of, scan_shard


@dataclass(frozen=True)
class Record:
    key: str  # unique within its collection
    source: str  # folder input: path relative to the root; shards: the sample key
    data: bytes
    label: str
    origin: str  # where to read it again: a path/URL, or "<shard url>#<member name>"


def is_folder(url: str, storage_options: dict) -> bool:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return "{" not in path and "*" not in path and fs.isdir(path)


def folder_records(url: str, storage_options: dict) -> Iterator[Record]:
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise UserError(f"no images under {url!r}")
    for path in paths:
        rel = posixpath.relpath(path, root)
        label = rel.split("/")[0] if "/" in rel else ""
        origin = fs.unstrip_protocol(path) if "://" in url else path
        yield Record(key=rel, source=rel, data=fs.cat_file(path), label=label, origin=origin)


def shard_records(url: str, storage_options: dict) -> Iterator[Record]:
    shards = expand_shards(url, storage_options)
    if not shards:
        raise UserError(f"no shards match {url!r}")
    for shard in shards:
        for stem, members in sorted(scan_shard(shard, storage_options, with_data=True).items()):
            if (image := image_of(members)) is not None:
                yield Record(stem, stem, image[2], label_of(members), f"{shard}#{image[0]}")


def records(url: str, storage_options: dict | None = None) -> Iterator[Record]:
    """Records of an image folder (recursively) or of a shard URL pattern (braces, globs)."""
    opts = storage_options or {}
    if is_folder(url, opts):
        return folder_records(url, opts)
    path = fsspec.core.url_to_fs(url, **opts)[1]
    if not path.endswith(".tar") and "{" not in path and "*" not in path:
        raise UserError(f"{url!r} is neither an image folder nor a .tar shard pattern")
    return shard_records(url, opts)
