"""The global sample order: seeded, world-size independent, resumable at any sample.

The training stream is the concatenation of epochs. Epoch ``e`` visits every sample exactly once:
shards are permuted with a generator seeded by (seed, e); consecutive groups of ``block_shards``
shards form blocks, and the samples of each block are permuted with a generator seeded by
(seed, e, block). Mixing within a block of shards (not the whole corpus) keeps reads local enough
for object storage while decorrelating neighbouring samples; the block size is a config knob.

Global batches are cut from the stream without regard to epoch boundaries, so no sample is ever
dropped (a batch may hold the last samples of epoch e and the first of e + 1), and fractional
epoch budgets are just a number of samples. The whole position is one integer: the number of
samples consumed so far. Any number of ranks or loader workers can resume from it: rank r of W
reads slice r of every global batch; which process decodes a sample never changes which samples
form a batch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MIX = 0x9E3779B97F4A7C15  # splitmix constant: decorrelates the (seed, epoch, block) streams


def _rng(*words: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([w & (2**63 - 1) for w in words]))
    )


@dataclass(frozen=True)
class SampleRef:
    """Where a sample lives: global id, shard number and index inside that shard."""

    sample_id: int
    shard: int
    index: int


class GlobalOrder:
    def __init__(self, shard_sizes: list[int], seed: int, block_shards: int = 8) -> None:
        if not shard_sizes or any(n < 0 for n in shard_sizes) or sum(shard_sizes) == 0:
            raise ValueError(
                f"shard sizes must be non-negative with at least one sample: {shard_sizes[:8]}"
            )
        if block_shards < 1:
            raise ValueError(f"block_shards must be >= 1, got {block_shards}")
        self.shard_sizes = list(shard_sizes)
        self.seed = seed
        self.block_shards = block_shards
        self.num_samples = sum(shard_sizes)
        self._shard_offsets = np.concatenate([[0], np.cumsum(shard_sizes)]).tolist()
        self._make_caches()

    def _make_caches(self) -> None:
        self._cache = lru_cache(maxsize=4)(self._block_order)
        self._epoch_cache = lru_cache(maxsize=2)(self._epoch_layout)

    def __getstate__(self) -> dict:  # loader worker processes rebuild the caches
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_epoch_cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    # ---- epoch layout ---------------------------------------------------------------------------

    def _epoch_layout(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """Shard groups of each block and each block's first position within the epoch."""
        perm = _rng(self.seed, epoch, _MIX).permutation(len(self.shard_sizes)).tolist()
        blocks = [perm[i : i + self.block_shards] for i in range(0, len(perm), self.block_shards)]
        starts, pos = [], 0
        for shards in blocks:
            starts.append(pos)
            pos += sum(self.shard_sizes[s] for s in shards)
        return blocks, starts

    def _block_order(self, epoch: int, block: int) -> np.ndarray:
        """Global sample ids of one block, in visiting order."""
        shards = self._epoch_cache(epoch)[0][block]
        ids = np.concatenate(
            [
                np.arange(self._shard_offsets[s], self._shard_offsets[s + 1], dtype=np.int64)
                for s in shards
            ]
        )
        return ids[_rng(self.seed, epoch, block, _MIX).permutation(len(ids))]

    # ---- lookups ---------------------------------------------------------------------------------

    def samples(self, start: int, count: int) -> list[int]:
        """Sample ids at positions [start, start + count)."""
        if start < 0 or count < 0:
            raise ValueError(f"positions must be >= 0, got start={start} count={count}")
        out: list[int] = []
        pos, end = start, start + count
        while pos < end:
            epoch, offset = divmod(pos, self.num_samples)
            starts = self._epoch_cache(epoch)[1]
            block = bisect.bisect_right(starts, offset) - 1
            order = self._cache(epoch, block)
            lo = offset - starts[block]
            take = min(end - pos, len(order) - lo)
            out.extend(order[lo : lo + take].tolist())
            pos += take
        return out

    def locate(self, sample_id: int) -> SampleRef:
        shard = bisect.bisect_right(self._shard_offsets, sample_id) - 1
        return SampleRef(sample_id, shard, sample_id - self._shard_offsets[shard])


def rank_slice(global_batch: int, world_size: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of a global batch that ``rank`` reads; the batch must split evenly."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} does not split over {world_size} ranks")
    per_rank = global_batch // world_size
    return rank * per_rank, (rank + 1) * per_rank


@dataclass
class Cursor:
    """Loader state saved with every checkpoint: the seed, and samples consumed so far."""

    seed: int
    position: int = 0
    num_samples: int = 0  # the dataset it belongs to, to refuse a resume on different data

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "num_samples": self.num_samples}

    @classmethod
    def from_state(cls, state: dict, num_samples: int) -> Cursor:
        if state.get("num_samples") != num_samples:
            raise ValueError(
                f"checkpoint loader state is for a dataset of {state.get('num_samples')} samples, "
                f"this one has {num_samples}; resume on the same data or start a new run"
            )
        return cls(
            seed=int(state["seed"]), position=int(state["position"]), num_samples=num_samples
        )

    def epoch(self) -> float:
        return self.position / self.num_samples if self.num_samples else 0.0


def batch_for_rank(
    order: GlobalOrder, step_start: int, global_batch: int, world_size: int, rank: int
) -> list[int]:
    """Sample ids rank ``rank`` reads for the global batch starting at stream position ``step_start``."""
    lo, hi = rank_slice(global_batch, world_size, rank)
    return order.samples(step_start + lo, hi - lo)
