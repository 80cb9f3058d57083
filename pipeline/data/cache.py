"""A rank's local shard cache: its shards downloaded whole, in the order its read plan needs them,
by one background thread; bounded in bytes; each shard deleted once its last use is consumed.

    <dir>/<shard>.tar        the shard (renamed into place once its size and sha256 check out)
    <dir>/<shard>.idx        its compact index (offset, size, label per sample: raw int64 rows)
    <dir>/<shard>.bad        why it is unusable this time: its samples are skipped and counted
    <dir>/FAILED             the downloader's own error: readers raise it instead of waiting

Written by `ShardCache` in the rank's main process, read by `CachedShards` in that process and
in its loader workers (which share it). The main process reports each item it has received
(`consumed`): items arrive in order, so every use that ended by then may go, and the uses the
next item needs are always downloaded, whatever the bound (the bound limits prefetching only).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.data.plan import Use
from pipeline.data.shards import SAMPLE_DTYPE, CorruptSample, ShardStore

FAILED = "FAILED"
WAIT_LIMIT_S = 1800.0  # a reader waiting this long for a shard: the downloader is stuck


def shard_file(directory: str, shard: int, kind: str) -> str:
    return os.path.join(directory, f"{shard:08d}.{kind}")


@dataclass
class CacheStats:
    downloads: int = 0
    bytes_fetched: int = 0  # from storage, repeated tries included
    bad_shards: list[str] = field(default_factory=list)
    peak_bytes: int = 0  # most shard bytes held at once

    def as_dict(self) -> dict:
        return {"downloads": self.downloads, "bytes_fetched": self.bytes_fetched,
                "bad_shards": list(self.bad_shards), "peak_bytes": self.peak_bytes}  # fmt: skip


class ShardCache:
    def __init__(
        self,
        store: ShardStore,
        directory: str,
        uses: Iterable[Use],
        capacity_bytes: int,
        prefetch_shards: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self.store, self.directory = store, directory
        self.capacity, self.prefetch = capacity_bytes, prefetch_shards
        self.log = log
        self.stats = CacheStats()
        self._uses = iter(uses)
        self._cond = threading.Condition()
        self._frontier = 0  # the next item the consumer will take
        self._held: dict[int, int] = {}  # shard -> number of walked uses not yet ended
        self._ends: list[tuple[int, int]] = []  # heap of (last item, shard) of walked uses
        self._ahead: deque[int] = deque()  # first items of walked uses, in order
        self._bytes = 0
        self._stop = False
        shutil.rmtree(directory, ignore_errors=True)  # a killed attempt's files: start clean
        os.makedirs(directory)
        self._thread = threading.Thread(target=self._run, name="shard-downloader", daemon=True)

    def start(self) -> ShardCache:
        self._thread.start()
        return self

    def consumed(self, item: int) -> None:
        """Items up to ``item`` have been delivered: their shards may go."""
        with self._cond:
            self._frontier = max(self._frontier, item + 1)
            while self._ends and self._ends[0][0] <= item:
                _, shard = heapq.heappop(self._ends)
                self._held[shard] -= 1
                if self._held[shard] == 0:
                    del self._held[shard]
                    self._evict(shard)
            while self._ahead and self._ahead[0] <= self._frontier:
                self._ahead.popleft()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- the downloader thread --------------------------------------------------------------------

    def _evict(self, shard: int) -> None:
        for kind in ("tar", "idx", "bad"):
            path = shard_file(self.directory, shard, kind)
            if kind == "tar" and os.path.lexists(path):
                self._bytes -= int(self.store.table.bytes[shard])
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def _may_walk(self, use: Use) -> bool:
        if self._stop or use.first_item <= self._frontier:
            return True  # the next item needs it: never held back
        size = 0 if use.shard in self._held else int(self.store.table.bytes[use.shard])
        return len(self._ahead) < self.prefetch and self._bytes + size <= self.capacity

    def _run(self) -> None:
        try:
            for use in self._uses:
                with self._cond:
                    while not self._may_walk(use):
                        self._cond.wait()
                    if self._stop:
                        return
                    held = use.shard in self._held
                    if not held:
                        self._held[use.shard] = 0
                    self._held[use.shard] += 1
                    heapq.heappush(self._ends, (use.last_item, use.shard))
                    if use.first_item > self._frontier:
                        self._ahead.append(use.first_item)
                if not held:
                    self._fetch(use.shard)
        except Exception as e:  # readers raise this instead of waiting for ever
            self.log(f"data: the shard downloader failed: {type(e).__name__}: {e}")
            with open(os.path.join(self.directory, FAILED), "w") as f:
                f.write(f"{type(e).__name__}: {e}")

    def _fetch(self, shard: int) -> None:
        tar = shard_file(self.directory, shard, "tar")
        fetched, reason = self.store.download(shard, f"{tar}.new")
        self.stats.bytes_fetched += fetched
        name = self.store.name(shard)
        if reason is None:
            try:
                rows = self.store.fetch_index(shard, _file_reader(f"{tar}.new"))
            except (OSError, ValueError) as e:
                reason = f"its index is unreadable: {e}"
        if reason is not None:
            self.stats.bad_shards.append(name)
            count = int(self.store.table.sizes[shard])
            self.log(
                f"data: shard {name} is skipped, its {count} samples counted as skipped: {reason}"
            )
            _write_atomic(shard_file(self.directory, shard, "bad"), reason.encode())
            if os.path.lexists(f"{tar}.new"):
                os.remove(f"{tar}.new")
        else:
            _write_atomic(shard_file(self.directory, shard, "idx"), rows.tobytes())
            os.replace(f"{tar}.new", tar)
        with self._cond:
            if reason is None:
                self._bytes += int(self.store.table.bytes[shard])
                self.stats.downloads += 1
                self.stats.peak_bytes = max(self.stats.peak_bytes, self._bytes)
            if shard not in self._held:  # its uses ended while it downloaded (no read needed it)
                self._evict(shard)


def _file_reader(path: str):
    def read(offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), size, offset)

    return read


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class CachedShards:
    """Samples of a rank's shards, read by offset from its cache (waiting for the downloader);
    samples of other shards (a few per epoch boundary) by byte range from storage."""

    def __init__(self, store: ShardStore, directory: str) -> None:
        self.store, self.directory = store, directory
        self._tables: dict[int, np.ndarray] = {}
        self.wait_s = 0.0  # time this process spent waiting for downloads (a data stall)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": {}, "wait_s": 0.0}

    def read(self, shard: int, indices: list[int]) -> list[tuple[bytes, int] | CorruptSample]:
        """Image bytes and label of samples of one shard held by this rank's cache."""
        start = None
        while True:
            try:
                got = self._read_open(shard, indices)
                if start is not None:
                    self.wait_s += time.perf_counter() - start
                return got
            except FileNotFoundError:  # not there yet, or evicted for an earlier use
                start = start or time.perf_counter()
                waited = time.perf_counter() - start
                try:
                    self._check_waiting(shard, waited)
                except CorruptSample as e:  # the whole shard is unusable this time
                    return [e] * len(indices)
                time.sleep(min(0.05, 0.001 + waited / 4))

    def _check_waiting(self, shard: int, waited: float) -> None:
        bad = shard_file(self.directory, shard, "bad")
        if os.path.exists(bad):
            with open(bad) as f:
                raise CorruptSample(f"shard {self.store.name(shard)} skipped: {f.read()}")
        failed = os.path.join(self.directory, FAILED)
        if os.path.exists(failed):
            with open(failed) as f:
                raise RuntimeError(f"the shard downloader failed: {f.read()}")
        if waited > WAIT_LIMIT_S:
            raise TimeoutError(
                f"shard {self.store.name(shard)} not downloaded in {WAIT_LIMIT_S:.0f}s"
            )

    def _read_open(self, shard: int, indices: list[int]) -> list:
        with open(shard_file(self.directory, shard, "tar"), "rb") as f:
            table = self._table(shard)  # after the open: the file cannot go away under us now
            fd, end = f.fileno(), os.fstat(f.fileno()).st_size
            out = []
            for i in indices:
                offset, size, label = (int(v) for v in table[i])
                if offset < 0 or label < 0:
                    out.append(
                        CorruptSample(
                            f"sample {i} of {self.store.name(shard)} has no image or no label"
                        )
                    )
                elif offset + size > end:
                    out.append(
                        CorruptSample(
                            f"sample {i} of {self.store.name(shard)} is cut off (truncated shard)"
                        )
                    )
                else:
                    out.append((os.pread(fd, size, offset), label))
            return out

    def _table(self, shard: int) -> np.ndarray:
        table = self._tables.get(shard)
        if table is None:
            with open(shard_file(self.directory, shard, "idx"), "rb") as f:
                table = np.frombuffer(f.read(), dtype=SAMPLE_DTYPE)
            if len(self._tables) >= 64:
                self._tables.pop(next(iter(self._tables)))
            self._tables[shard] = table
        return table
