"""The global sample order: seeded, world-size independent, resumable at any sample, and laid out
so that every shard is read by one rank per epoch.

The training stream is the concatenation of epochs. Epoch ``e`` visits every sample exactly once:

- shards are permuted with a generator seeded by (seed, e) and their samples concatenated;
- that sequence is cut into ``partitions`` (P) contiguous parts of N // P or N // P + 1 samples
  (a shard at a cut belongs to both neighbours, each with its own samples);
- each partition is cut at shard boundaries into blocks of ``block_shards`` shards, and the
  samples of each block are permuted with a generator seeded by (seed, e, p, block). Odd
  partitions visit their blocks last to first: the two halves of a shard split between
  partitions p and p + 1 are then read at the same time (both at the start or both at the end
  of the epoch), so a rank owning both downloads it once;
- stream position ``o`` of the epoch is sample ``o // P`` of partition ``o % P``: every window of
  the stream takes the same number of samples from every partition.

Global batches are cut from the stream without regard to epoch boundaries, so no sample is ever
dropped and fractional epoch budgets are just a number of samples. The whole position is one
integer: the number of samples consumed so far.

Within a global batch the samples are put in canonical order: by epoch, then partition, then
stream position; rank r of W reads slice r of that order. Rank r therefore reads exactly the
samples of partitions [r P/W, (r + 1) P/W) (it owns them, and their shards: `plan.rank_uses`)
in every batch inside one epoch, where each partition contributes B / P samples: P must divide
the global batch B and W must divide P. The one batch per epoch boundary holds the end of one
epoch, then the start of the next (so the stream of batches still has every epoch whole); its
slices do not follow ownership, and ranks read those samples of others' partitions by byte
range: at most B ranged reads per epoch. Which process reads a sample never changes which
samples form a batch, nor their order.
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


@dataclass(frozen=True)
class Piece:
    """Samples [lo, hi) of one shard, as they fall into one block of one partition."""

    shard: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Block:
    pieces: tuple[Piece, ...]
    start: int  # first partition-local index, in visiting order
    stop: int


@dataclass(frozen=True)
class Window:
    """A slice of a window of the stream in canonical order: sample ids, the epoch and the
    partition each one comes from."""

    ids: np.ndarray
    epochs: np.ndarray
    partitions: np.ndarray


class GlobalOrder:
    def __init__(
        self, shard_sizes: list[int], seed: int, partitions: int = 1, block_shards: int = 4
    ) -> None:
        if not shard_sizes or any(n < 0 for n in shard_sizes) or sum(shard_sizes) == 0:
            raise ValueError(
                f"shard sizes must be non-negative with at least one sample: {shard_sizes[:8]}"
            )
        if block_shards < 1:
            raise ValueError(f"block_shards must be >= 1, got {block_shards}")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.seed = seed
        self.partitions = partitions
        self.block_shards = block_shards
        self.num_samples = int(self.shard_sizes.sum())
        self._shard_offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        self._make_caches()

    def _make_caches(self) -> None:
        self._epoch_cache = lru_cache(maxsize=2)(self._epoch_sequence)
        self._blocks_cache = lru_cache(maxsize=2 * self.partitions + 2)(self._partition_blocks)
        self._ids_cache = lru_cache(maxsize=2 * self.partitions + 4)(self._block_ids)

    def __getstate__(self) -> dict:  # loader worker processes rebuild the caches
        drop = ("_epoch_cache", "_blocks_cache", "_ids_cache")
        return {k: v for k, v in self.__dict__.items() if k not in drop}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    # ---- layout ----------------------------------------------------------------------------------

    def partition_length(self, p: int) -> int:
        base, extra = divmod(self.num_samples, self.partitions)
        return base + (p < extra)

    def _partition_start(self, p: int) -> int:
        base, extra = divmod(self.num_samples, self.partitions)
        return p * base + min(p, extra)

    def _epoch_sequence(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's shard permutation and where each permuted shard starts in the sequence."""
        perm = _rng(self.seed, epoch, _MIX).permutation(len(self.shard_sizes))
        return perm, np.concatenate([[0], np.cumsum(self.shard_sizes[perm])])

    def _partition_blocks(self, epoch: int, p: int) -> tuple[Block, ...]:
        """Partition p's blocks in visiting order."""
        perm, starts = self._epoch_cache(epoch)
        lo, hi = self._partition_start(p), self._partition_start(p) + self.partition_length(p)
        pieces = []
        k = int(np.searchsorted(starts, lo, side="right")) - 1
        while lo < hi:
            shard = int(perm[k])
            end = min(hi, int(starts[k + 1]))
            if end > lo:
                first = lo - int(starts[k])
                pieces.append(Piece(shard, first, first + end - lo))
            lo, k = end, k + 1
        groups = [
            pieces[i : i + self.block_shards] for i in range(0, len(pieces), self.block_shards)
        ]
        if p % 2:
            groups.reverse()
        blocks, pos = [], 0
        for group in groups:
            size = sum(piece.hi - piece.lo for piece in group)
            blocks.append(Block(tuple(group), pos, pos + size))
            pos += size
        return tuple(blocks)

    def blocks(self, epoch: int, p: int) -> tuple[Block, ...]:
        return self._blocks_cache(epoch, p)

    def _block_ids(self, epoch: int, p: int, b: int) -> np.ndarray:
        """Global sample ids of block b of partition p, in visiting order."""
        pieces = self._blocks_cache(epoch, p)[b].pieces
        first = self._shard_offsets
        ids = np.concatenate(
            [np.arange(first[x.shard] + x.lo, first[x.shard] + x.hi) for x in pieces]
        )
        return ids[_rng(self.seed, epoch, p, b, _MIX).permutation(len(ids))]

    def _partition_ids(self, epoch: int, p: int, j0: int, j1: int) -> np.ndarray:
        """Ids at partition-local indices [j0, j1) of partition p in epoch e."""
        blocks = self._blocks_cache(epoch, p)
        starts = [b.start for b in blocks]
        out, j = [], j0
        while j < j1:
            b = bisect.bisect_right(starts, j) - 1
            take = min(j1, blocks[b].stop) - j
            out.append(
                self._ids_cache(epoch, p, b)[j - blocks[b].start : j - blocks[b].start + take]
            )
            j += take
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    # ---- lookups ---------------------------------------------------------------------------------

    def _pieces(self, start: int, count: int) -> list[tuple[int, int, int, int]]:
        """(epoch, first offset, end offset, index in the window) of each epoch a window spans."""
        if start < 0 or count < 0:
            raise ValueError(f"positions must be >= 0, got start={start} count={count}")
        out, pos, end = [], start, start + count
        while pos < end:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(end - pos, self.num_samples - offset)
            out.append((epoch, offset, offset + take, pos - start))
            pos += take
        return out

    def _range(self, o0: int, o1: int, p: int) -> tuple[int, int]:
        """Partition-local indices of partition p at epoch offsets [o0, o1)."""
        P = self.partitions
        return (o0 - p + P - 1) // P, (o1 - p + P - 1) // P

    def samples(self, start: int, count: int) -> list[int]:
        """Sample ids at stream positions [start, start + count), in stream order."""
        out = np.empty(count, dtype=np.int64)
        for epoch, o0, o1, at in self._pieces(start, count):
            for p in range(self.partitions):
                j0, j1 = self._range(o0, o1, p)
                if j1 > j0:
                    offsets = np.arange(j0, j1) * self.partitions + p
                    out[at + offsets - o0] = self._partition_ids(epoch, p, j0, j1)
        return out.tolist()

    def window(self, start: int, count: int, lo: int = 0, hi: int | None = None) -> Window:
        """Slice [lo, hi) of the window [start, start + count) in canonical order: by epoch,
        then partition, then stream position; only the partitions the slice touches are read."""
        hi = count if hi is None else hi
        ids, epochs, parts = [], [], []
        at = 0  # canonical index of the current (epoch, partition) run
        for epoch, o0, o1, _ in self._pieces(start, count):
            for p in range(self.partitions):
                if at >= hi:
                    break
                j0, j1 = self._range(o0, o1, p)
                n = max(0, j1 - j0)
                a, b = max(lo, at), min(hi, at + n)
                if a < b:
                    ids.append(self._partition_ids(epoch, p, j0 + a - at, j0 + b - at))
                    epochs.append(np.full(b - a, epoch))
                    parts.append(np.full(b - a, p))
                at += n
        cat = lambda xs: np.concatenate(xs) if xs else np.empty(0, dtype=np.int64)  # noqa: E731
        return Window(cat(ids), cat(epochs), cat(parts))

    def locate(self, sample_id: int) -> SampleRef:
        shard = int(np.searchsorted(self._shard_offsets, sample_id, side="right")) - 1
        return SampleRef(sample_id, shard, sample_id - int(self._shard_offsets[shard]))

    def locate_many(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shards, indices within them) of many samples at once."""
        shards = np.searchsorted(self._shard_offsets, sample_ids, side="right") - 1
        return shards, sample_ids - self._shard_offsets[shards]

    def owned(self, world: int, rank: int) -> range:
        """The partitions rank ``rank`` of ``world`` owns (and reads the shards of)."""
        if self.partitions % world:
            raise ValueError(f"{world} ranks do not divide {self.partitions} partitions")
        per = self.partitions // world
        return range(rank * per, (rank + 1) * per)


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
    return order.window(step_start, global_batch, lo, hi).ids.tolist()


def canonical_batch(order: GlobalOrder, step_start: int, size: int) -> list[int]:
    """The whole global batch in canonical order: every rank's slice, rank after rank."""
    return order.window(step_start, size).ids.tolist()
