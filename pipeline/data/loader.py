"""The training loader: this rank's micro-batches, in stream order, from a cursor position.

Item ``i`` of ``RankBatches`` is this rank's ``i``-th micro-batch after the start position:
global step ``i // accum`` covers stream positions [start + step*B, start + (step+1)*B); this
rank reads its slice of that batch in canonical order (see `order`), cut into ``accum``
micro-batches. A standard DataLoader with any number of workers delivers items in order, so
batch contents never depend on workers or ranks. Corrupt samples are skipped (the micro-batch is
shorter) and counted in the batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.cache import CachedShards, ShardCache
from pipeline.data.order import GlobalOrder, rank_slice
from pipeline.data.plan import rank_uses
from pipeline.data.shards import CorruptSample, ShardStore
from pipeline.ingest.encode import RejectedImage


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    world_size: int
    rank: int

    @property
    def accum(self) -> int:
        per_rank = rank_slice(self.global_batch, self.world_size, self.rank)
        span = per_rank[1] - per_rank[0]
        if span % self.micro_batch:
            raise ValueError(
                f"per-rank batch {span} (global {self.global_batch} / {self.world_size} ranks) "
                f"is not a multiple of micro-batch {self.micro_batch}"
            )
        return span // self.micro_batch


def sample_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, sample_id, 0xA06])


def micro_batch_seed(seed: int, position: int) -> int:
    """The torch seed for the forward pass of the micro-batch starting at stream ``position``:
    dropout and stochastic-depth draws then belong to the micro-batch, not to the rank that
    happens to run it, so a resume on another number of workers draws the same masks."""
    return int(np.random.SeedSequence([seed, position, 0xD20]).generate_state(1)[0])


@dataclass
class RankReader:
    """How one rank reads samples: from its shard cache for the partitions it owns, by byte
    range from storage for the few others an epoch boundary hands it."""

    shards: CachedShards
    owned: range

    def read(
        self, shards: np.ndarray, indices: np.ndarray, partitions: np.ndarray
    ) -> list[tuple[bytes, int] | CorruptSample]:
        out: list = [None] * len(shards)
        groups: dict[int, list[int]] = defaultdict(list)
        for k, (shard, part) in enumerate(zip(shards.tolist(), partitions.tolist(), strict=True)):
            if part in self.owned:
                groups[shard].append(k)
            else:
                try:
                    out[k] = self.shards.store.read_sample(shard, int(indices[k]))
                except CorruptSample as e:
                    out[k] = e
        for shard, ks in groups.items():
            for k, got in zip(
                ks, self.shards.read(shard, [int(indices[k]) for k in ks]), strict=True
            ):
                out[k] = got
        return out


@dataclass
class MicroBatch:
    """One rank's micro-batch, as the loader hands it to the trainer."""

    images: torch.Tensor  # uint8 [n, 3, res, res], n < micro_batch when samples were skipped
    labels: torch.Tensor  # int64 [n]
    sample_ids: torch.Tensor  # int64 [n]: the samples' ids in the data set (the audit trail)
    skipped: list[str]  # why each dropped sample was dropped
    index: int  # its place in this rank's stream of micro-batches
    position: int  # stream position of its first sample: seeds its dropout draws
    wait_s: float  # time spent waiting on shards still downloading


class RankBatches(torch.utils.data.Dataset):
    def __init__(
        self,
        reader: RankReader,
        order: GlobalOrder,
        transform,
        plan: BatchPlan,
        start: int,
        steps: int,
    ) -> None:
        self.reader, self.order, self.transform, self.plan = reader, order, transform, plan
        self.start, self.steps = start, steps
        self.accum = plan.accum
        self.lo, _ = rank_slice(plan.global_batch, plan.world_size, plan.rank)

    def __len__(self) -> int:
        return self.steps * self.accum

    def bounds(self, i: int) -> tuple[int, int]:
        """(stream position of the item's global batch, its first canonical index in it)."""
        step, micro = divmod(i, self.accum)
        return self.start + step * self.plan.global_batch, self.lo + micro * self.plan.micro_batch

    def __getitem__(self, i: int) -> MicroBatch:
        if not 0 <= i < len(self):
            raise IndexError(i)
        batch_start, first = self.bounds(i)
        mb = self.plan.micro_batch
        window = self.order.window(batch_start, self.plan.global_batch, first, first + mb)
        shards, indices = self.order.locate_many(window.ids)
        images, labels, ids, errors = [], [], [], []
        waited = self.reader.shards.wait_s
        got = self.reader.read(shards, indices, window.partitions)
        for sample_id, epoch, item in zip(
            window.ids.tolist(), window.epochs.tolist(), got, strict=True
        ):
            try:
                if isinstance(item, CorruptSample):
                    raise item
                data, label = item
                image = self.transform(data, sample_rng(self.order.seed, epoch, sample_id))
            except (CorruptSample, RejectedImage) as e:
                errors.append(f"sample {sample_id}: {e}")
                continue
            images.append(image)
            labels.append(label)
            ids.append(sample_id)
        res = getattr(self.transform, "res", 0)
        return MicroBatch(
            images=torch.stack(images)
            if images
            else torch.zeros((0, 3, res, res), dtype=torch.uint8),
            labels=torch.tensor(labels, dtype=torch.long),
            sample_ids=torch.tensor(ids, dtype=torch.long),
            skipped=errors,
            index=i,
            position=batch_start + first,
            wait_s=self.reader.shards.wait_s - waited,  # for shards still downloading
        )


def make_loader(
    dataset: torch.utils.data.Dataset, workers: int = 0, prefetch: int = 2
) -> torch.utils.data.DataLoader:
    """In-order delivery whatever ``workers`` is; items are whole micro-batches.

    The loader gets its own generator: creating an iterator otherwise draws from the global
    torch RNG, and a resumed run (which creates it after restoring that RNG) would shift
    dropout and stochastic depth away from the uninterrupted run. Sample randomness comes from
    ``sample_rng`` anyway."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


@dataclass(frozen=True)
class CacheSettings:
    directory: str
    capacity_bytes: int
    prefetch_shards: int


def rank_stream(
    store: ShardStore,
    order: GlobalOrder,
    transform,
    plan: BatchPlan,
    start: int,
    steps: int,
    workers: int,
    cache: CacheSettings,
    log=print,
    on_start=None,
) -> Iterator[dict]:
    """This rank's micro-batches for ``steps`` steps from stream position ``start`` (a multiple
    of the global batch), read through a shard cache of its own that downloads what its read
    plan needs; ``workers`` loader processes share it. Close the iterator when done: the cache
    goes with it. ``on_start(cache)`` sees the cache (its stats) once it runs."""
    uses = rank_uses(order, plan.global_batch, plan.world_size, plan.rank,
                     start // plan.global_batch, steps, plan.accum)  # fmt: skip
    shard_cache = ShardCache(store, cache.directory, uses, cache.capacity_bytes,
                             cache.prefetch_shards, log)  # fmt: skip
    reader = RankReader(CachedShards(store, cache.directory),
                        order.owned(plan.world_size, plan.rank))  # fmt: skip
    dataset = RankBatches(reader, order, transform, plan, start, steps)
    loader = iter(make_loader(dataset, workers))  # forks its workers before the thread starts
    shard_cache.start()
    if on_start is not None:
        on_start(shard_cache)
    try:
        for batch in loader:
            shard_cache.consumed(batch.index)
            yield batch
    finally:
        del loader  # stops the loader workers
        shard_cache.close()
