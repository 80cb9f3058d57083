"""The storage side of the data plane: a shard set's table (from its manifest), each shard's index
in compact form, and the two ways a shard is read from storage: downloaded whole (one sequential
request, checked against the manifest's size and sha256) or, for a stray sample, by byte range.

Nothing here holds a shard in Python memory: downloads stream to a local file, and a sample is
its member's bytes alone. Only image members and labels are ever read; other members (``.pyd``,
``.pickle``, ...) are never touched, so nothing read from storage is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

import fsspec
import numpy as np

from pipeline.data.manifest import Manifest, ShardIndex, manifest_path, read_manifest
from pipeline.ingest.sources import IMAGE_EXTENSIONS
from pipeline.storage import is_local

IMAGE_MEMBERS = {ext.lstrip(".") for ext in IMAGE_EXTENSIONS}
# One row per sample: the image member's byte span and the class index (-1: no usable label).
SAMPLE_DTYPE = np.dtype([("offset", "<i8"), ("size", "<i8"), ("label", "<i8")])
DOWNLOAD_TRIES = 3  # per download, around gcsfs/s3fs's own retries of a failed request
CHECKSUM_TRIES = 2  # a shard that fails its size or sha256 check is downloaded once more


class CorruptSample(ValueError):
    """A sample that cannot be read or decoded; the loader skips and counts it."""


def sample_table(index: ShardIndex, read_cls) -> np.ndarray:
    """The compact index of a shard; ``read_cls(offset, size)`` reads a ``.cls`` member for
    indexes that carry no labels."""
    rows = np.zeros(len(index.samples), dtype=SAMPLE_DTYPE)
    for i, sample in enumerate(index.samples):
        image = next((s for ext, s in sample.members.items() if ext.lower() in IMAGE_MEMBERS), None)
        label = sample.label
        if label is None and "cls" in sample.members:
            span = sample.members["cls"]
            try:
                label = int(read_cls(span.offset, span.size))
            except ValueError:
                label = None
        rows[i] = (image.offset, image.size, -1) if image else (-1, 0, -1)
        if label is not None and label >= 0:
            rows[i]["label"] = label
    return rows


@dataclass(frozen=True)
class ShardTable:
    """What the loader needs of a manifest, as flat arrays: a billion-image manifest has
    hundreds of thousands of shards, and this table is copied into every loader process
    (pydantic records would cost ~1 KB per shard there, these ~150 bytes)."""

    names: np.ndarray  # bytes, fixed width
    index_names: np.ndarray
    bytes: np.ndarray
    sha256: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, manifest: Manifest) -> ShardTable:
        s = manifest.shards
        text = lambda xs: np.array([x.encode() for x in xs], dtype=bytes)  # noqa: E731
        return cls(text(r.name for r in s), text(r.index for r in s),
                   np.array([r.bytes for r in s], dtype=np.int64), text(r.sha256 for r in s),
                   np.array([r.num_samples for r in s], dtype=np.int64))  # fmt: skip

    def __len__(self) -> int:
        return len(self.sizes)

    def name(self, shard: int) -> str:
        return self.names[shard].decode()


class ShardStore:
    """A shard set on any fsspec URL: its table, index files and tars."""

    def __init__(self, directory: str, prefix: str, storage_options: dict | None = None) -> None:
        self.directory = directory.rstrip("/")
        self.storage_options = storage_options or {}
        manifest = read_manifest(manifest_path(self.directory, prefix), self.storage_options)
        self.classes = list(manifest.classes)
        self.num_samples = manifest.num_samples
        self.table = ShardTable.of(manifest)
        self.shards_root = (manifest.root or self.directory).rstrip("/")
        self._fs = self._tar_fs = None
        self._indexes: dict[int, np.ndarray] = {}  # stray reads only: a few per epoch

    def __getstate__(self) -> dict:  # loader workers open their own filesystem handles
        return {**self.__dict__, "_fs": None, "_tar_fs": None, "_indexes": {}}

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """Where the manifest and index files are."""
        if self._fs is None:
            self._fs = fsspec.core.url_to_fs(self.directory, **self.storage_options)[0]
        return self._fs

    @property
    def tar_fs(self) -> fsspec.AbstractFileSystem:
        """Where the tars are (another store when they were indexed in place)."""
        if self._tar_fs is None:
            self._tar_fs = fsspec.core.url_to_fs(self.shards_root, **self.storage_options)[0]
        return self._tar_fs

    def _path(self, root: str, name: str) -> str:
        return fsspec.core.url_to_fs(f"{root}/{name}", **self.storage_options)[1]

    def tar_path(self, shard: int) -> str:
        return self._path(self.shards_root, self.table.name(shard))

    def name(self, shard: int) -> str:
        return self.table.name(shard)

    def fetch_index(self, shard: int, read_cls=None) -> np.ndarray:
        path = self._path(self.directory, self.table.index_names[shard].decode())
        index = ShardIndex.model_validate(json.loads(self.fs.cat_file(path)))
        return sample_table(index, read_cls or (lambda o, n: self.read_range(shard, o, n)))

    def read_range(self, shard: int, offset: int, size: int) -> bytes:
        return self.tar_fs.cat_file(self.tar_path(shard), start=offset, end=offset + size)

    def read_sample(self, shard: int, index: int) -> tuple[bytes, int]:
        """A sample of a shard this process does not hold, by byte range."""
        try:
            if shard not in self._indexes:
                if len(self._indexes) >= 8:
                    self._indexes.pop(next(iter(self._indexes)))
                self._indexes[shard] = self.fetch_index(shard)
            row = self._indexes[shard][index]
            if row["offset"] < 0 or row["label"] < 0:
                raise CorruptSample(f"sample {index} of {self.name(shard)} has no image or label")
            return self.read_range(shard, int(row["offset"]), int(row["size"])), int(row["label"])
        except (OSError, ValueError) as e:
            if isinstance(e, CorruptSample):
                raise
            raise CorruptSample(f"{self.name(shard)} unreadable: {e}") from None

    def download(self, shard: int, dest: str) -> tuple[int, str | None]:
        """Fetch shard whole to ``dest`` (written under a temporary name, renamed once it
        checks out). Returns (bytes fetched, None) or (bytes fetched, why it is unusable)."""
        if is_local(self.tar_fs):  # nothing to download: check the file where it is, link to it
            source = self.tar_path(shard)
            try:
                reason = self._check(shard, source, os.path.getsize(source))
            except OSError as e:
                reason = f"unreadable: {e}"
            if reason is None:
                os.symlink(os.path.abspath(source), dest)
            return 0, reason
        fetched, reason = 0, None
        for _ in range(CHECKSUM_TRIES):
            part = f"{dest}.part"
            try:
                self._get(shard, part)
            except (OSError, TimeoutError) as e:
                return fetched, f"unreadable after {DOWNLOAD_TRIES} tries: {e}"
            size = os.path.getsize(part)
            fetched += size
            reason = self._check(shard, part, size)
            if reason is None:
                os.replace(part, dest)
                return fetched, None
            os.remove(part)
        return fetched, f"{reason} (downloaded {CHECKSUM_TRIES} times)"

    def _get(self, shard: int, part: str) -> None:
        for attempt in range(DOWNLOAD_TRIES):
            try:
                self.tar_fs.get_file(self.tar_path(shard), part, **self._get_options())
                return
            except FileNotFoundError:
                raise
            except (OSError, TimeoutError):
                if attempt == DOWNLOAD_TRIES - 1:
                    raise
                time.sleep(2**attempt)

    def _get_options(self) -> dict:
        """gcsfs fetches objects over 100 MB as 4 concurrent 16 MiB ranges with up to 128 MiB
        buffered in memory; one streamed request keeps a loader process's memory flat."""
        fs = self.tar_fs
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
        return {"concurrency": 1} if {"gs", "gcs"} & set(protocols) else {}

    def _check(self, shard: int, path: str, size: int) -> str | None:
        want = int(self.table.bytes[shard])
        if size != want:
            return f"truncated or wrong size: {size} bytes, the manifest says {want}"
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                digest.update(chunk)
        want = self.table.sha256[shard].decode()
        if digest.hexdigest() != want:
            return (
                f"sha256 {digest.hexdigest()[:12]}... does not match the manifest's {want[:12]}..."
            )
        return None
