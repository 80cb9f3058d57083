"""A rank's read plan: which shards it downloads, in which order, and when each may go.

The loader delivers a rank's micro-batches as items 0, 1, 2, ... (``accum`` per optimizer step).
Each block of an owned partition (see `order`) is read over a known range of steps; its shards
are needed from the block's first item to its last. A `Use` is one such need; the shard cache
downloads uses in order of first item and deletes a shard once every use of it has ended.
Uses come epoch by epoch, lazily: a run over a billion images never holds a whole plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.data.order import GlobalOrder


@dataclass(frozen=True, order=True)
class Use:
    first_item: int
    last_item: int
    shard: int


def rank_uses(
    order: GlobalOrder,
    global_batch: int,
    world: int,
    rank: int,
    first_step: int,
    steps: int,
    accum: int,
) -> Iterator[Use]:
    """The shards rank ``rank`` reads in steps [first_step, first_step + steps), item 0 being
    the first micro-batch of ``first_step``; sorted by first item."""
    if steps <= 0:
        return
    n, P = order.num_samples, order.partitions
    last_step = first_step + steps - 1
    first_epoch = first_step * global_batch // n
    last_epoch = (last_step * global_batch + global_batch - 1) // n
    for epoch in range(first_epoch, last_epoch + 1):
        uses = []
        for p in order.owned(world, rank):
            for block in order.blocks(epoch, p):
                s0 = (epoch * n + block.start * P + p) // global_batch
                s1 = (epoch * n + (block.stop - 1) * P + p) // global_batch
                s0, s1 = max(s0, first_step), min(s1, last_step)
                if s0 > s1:
                    continue
                first = (s0 - first_step) * accum
                last = (s1 - first_step) * accum + accum - 1
                uses += [Use(first, last, piece.shard) for piece in block.pieces]
        yield from sorted(uses)


def block_shards_per_rank(order: GlobalOrder, world: int) -> int:
    """Shards of one block of every partition a rank owns: what it must hold at once to read
    its current blocks (a block's samples are shuffled together). Twice that also holds the
    next blocks while they download."""
    return (order.partitions // world) * order.block_shards


def cache_bytes(configured: int | None, partitions: int, block_shards: int, world: int,
                largest_shard: int) -> int:  # fmt: skip
    """A rank's cache bound: ``configured``, or two blocks of every partition it owns at the
    largest shard's size. Refuses (ValueError, one line) a bound below one block each."""
    need = partitions // world * block_shards * largest_shard
    if configured is not None and configured < need:
        raise ValueError(
            f"data.cache_bytes={configured} cannot hold one block of each of the"
            f" {partitions // world} partitions a worker owns ({need} bytes: data.block_shards="
            f"{block_shards} x the largest shard, {largest_shard} bytes); expected at least that,"
            " or fewer data.block_shards"
        )
    return configured or 2 * need
