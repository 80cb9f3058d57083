"""Random access to samples of an ingested dataset: manifest + per-shard index -> member bytes.

Shards are fetched whole on first touch and kept in a small LRU: the global order visits a block
of shards at a time, so each shard is read from storage about once per epoch per process. Only
image, ``cls`` and ``json`` members are ever returned; anything else in a shard (``.pyd``,
``.pickle``, ...) is ignored, so nothing read from storage is ever unpickled.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import fsspec

from pipeline.data.manifest import Manifest, ShardIndex, manifest_path, read_manifest
from pipeline.ingest.sources import IMAGE_EXTENSIONS

READABLE = {ext.lstrip(".") for ext in IMAGE_EXTENSIONS} | {"cls", "json"}


class CorruptSample(ValueError):
    """A sample that cannot be read or decoded; the loader skips and counts it."""


class ShardReader:
    def __init__(
        self,
        directory: str,
        prefix: str,
        storage_options: dict | None = None,
        cache_shards: int = 4,
    ) -> None:
        self.directory = directory.rstrip("/")
        self.storage_options = storage_options or {}
        self.manifest: Manifest = read_manifest(
            manifest_path(self.directory, prefix), self.storage_options
        )
        self.cache_shards = cache_shards
        self._indexes: dict[int, ShardIndex] = {}
        self._shards: OrderedDict[int, bytes] = OrderedDict()
        self._fs = None
        self._root = fsspec.core.url_to_fs(self.directory, **self.storage_options)[1]

    def __getstate__(self) -> dict:  # loader workers get a fresh cache and filesystem handle
        state = dict(self.__dict__)
        state.update(_shards=OrderedDict(), _fs=None)
        return state

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs = fsspec.core.url_to_fs(self.directory, **self.storage_options)[0]
        return self._fs

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def index(self, shard: int) -> ShardIndex:
        if shard not in self._indexes:
            rec = self.manifest.shards[shard]
            self._indexes[shard] = ShardIndex.model_validate(
                json.loads(self.fs.cat_file(self._path(rec.index)))
            )
        return self._indexes[shard]

    def _shard_bytes(self, shard: int) -> bytes:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        data = self.fs.cat_file(self._path(self.manifest.shards[shard].name))
        self._shards[shard] = data
        while len(self._shards) > self.cache_shards:
            self._shards.popitem(last=False)
        return data

    def read(self, shard: int, index: int) -> dict[str, bytes]:
        """Members of sample ``index`` of ``shard``; raises CorruptSample if any is cut off."""
        sample = self.index(shard).samples[index]
        try:
            data = self._shard_bytes(shard)
        except OSError as e:
            raise CorruptSample(
                f"shard {self.manifest.shards[shard].name} unreadable: {e}"
            ) from None
        out = {}
        for ext, span in sample.members.items():
            if ext not in READABLE:
                continue
            if span.offset + span.size > len(data):
                raise CorruptSample(f"{sample.key}.{ext} is cut off (truncated shard)")
            out[ext] = data[span.offset : span.offset + span.size]
        return out
