"""Units of dedup work: one shard of a shard set, or a fixed run of files of an image folder.

A unit is what one Ray task (reference side) or one actor call (pool side) reads, and what one
kept shard and one part of the audit come from. Units are planned from a listing before any
image is read, numbered in input order, so a serial and a parallel run split alike.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from pipeline.config import UserError
from pipeline.data.records import Record, is_folder
from pipeline.ingest.sources import (
    IMAGE_EXTENSIONS,
    expand_shards,
    image_of,
    label_of,
    scan_shard,
)

IMAGES_PER_UNIT = 4096  # folder inputs: files per unit (shard inputs: one shard each)


@dataclass(frozen=True)
class Unit:
    number: int
    url: str  # the shard, or the folder's root
    paths: tuple[str, ...] = ()  # folder input: this unit's files, relative to the root

    @property
    def name(self) -> str:
        return self.url if not self.paths else f"{self.url} (files {self.paths[0]}..)"


def plan_units(url: str, opts: dict, per_unit: int = IMAGES_PER_UNIT) -> list[Unit]:
    """Units of an image folder (recursively) or of a shard URL pattern; one line if empty."""
    if is_folder(url, opts):
        fs, root = fsspec.core.url_to_fs(url, **opts)
        rel = sorted(posixpath.relpath(p, root) for p in fs.find(root)
                     if p.lower().endswith(IMAGE_EXTENSIONS))  # fmt: skip
        if not rel:
            raise UserError(f"no images under {url!r}; expected an image folder or .tar shards")
        chunks = [tuple(rel[i : i + per_unit]) for i in range(0, len(rel), per_unit)]
        return [Unit(n, url.rstrip("/"), paths) for n, paths in enumerate(chunks)]
    path = fsspec.core.url_to_fs(url, **opts)[1]
    if not path.endswith(".tar") and "{" not in path and "*" not in path:
        raise UserError(f"{url!r} is neither an image folder nor a .tar shard pattern")
    shards = expand_shards(url, opts)
    if not shards:
        raise UserError(f"no shards match {url!r}")
    return [Unit(n, shard) for n, shard in enumerate(shards)]


def unit_records(unit: Unit, opts: dict) -> Iterator[Record]:
    """The unit's images as records, in a fixed order; UserError if its shard is unreadable."""
    if unit.paths:
        fs, root = fsspec.core.url_to_fs(unit.url, **opts)
        for rel in unit.paths:
            label = rel.split("/")[0] if "/" in rel else ""
            origin = fs.unstrip_protocol(f"{root}/{rel}") if "://" in unit.url else f"{root}/{rel}"
            yield Record(rel, rel, fs.cat_file(f"{root}/{rel}"), label, origin)
        return
    try:
        members = scan_shard(unit.url, opts, with_data=True)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise UserError(f"shard {unit.url} is unreadable ({type(e).__name__}: {e}); expected a"
                        " complete tar: replace it, or leave it out of the pattern") from None  # fmt: skip
    for stem, sample in sorted(members.items()):
        if (image := image_of(sample)) is not None:
            yield Record(stem, stem, image[2], label_of(sample), f"{unit.url}#{image[0]}")
