"""Global order and cursor: exactly once per epoch, world-size independent, exact resume."""

import heapq
import random
from collections import Counter

import pytest

from pipeline.data.order import Cursor, GlobalOrder, batch_for_rank, rank_slice
from pipeline.data.plan import rank_uses

SHARDS = [7, 3, 10, 1, 9, 6, 4]  # uneven, 40 samples


@pytest.mark.parametrize("partitions", [1, 3, 8])
@pytest.mark.parametrize("block_shards", [1, 3, 100])
def test_every_epoch_is_a_permutation(block_shards, partitions):
    order = GlobalOrder(SHARDS, seed=5, partitions=partitions, block_shards=block_shards)
    n = order.num_samples
    epochs = [order.samples(e * n, n) for e in range(3)]
    for ids in epochs:
        assert sorted(ids) == list(range(n))
    assert epochs[0] != epochs[1] != epochs[2]
    # Reading across an epoch boundary in pieces gives the same stream.
    stream = order.samples(0, 3 * n)
    assert stream == epochs[0] + epochs[1] + epochs[2]
    pieces = []
    pos = 0
    for size in [5, 33, 1, 40, 17, 24]:
        pieces += order.samples(pos, size)
        pos += size
    assert pieces == stream


def test_seed_determines_order_and_blocks_stay_local():
    a = GlobalOrder(SHARDS, seed=1, block_shards=2)
    assert a.samples(0, 40) == GlobalOrder(SHARDS, seed=1, block_shards=2).samples(0, 40)
    assert a.samples(0, 40) != GlobalOrder(SHARDS, seed=2, block_shards=2).samples(0, 40)
    # Within a block only that block's shards appear: the first block's samples come from two shards.
    first = a.blocks(0, 0)[0]
    assert len(first.pieces) == 2
    assert {a.locate(i).shard for i in a.samples(0, first.stop)} == {x.shard for x in first.pieces}


def test_locate():
    order = GlobalOrder(SHARDS, seed=0)
    assert order.locate(0).shard == 0 and order.locate(6).index == 6
    ref = order.locate(10)
    assert (ref.shard, ref.index) == (2, 0)
    assert order.locate(39).shard == 6


def _run(order, global_batch, total_steps, plan):
    """Simulate training: ``plan`` is a list of (steps, world_size) segments; between segments the
    job is 'killed' and resumes from a saved cursor (state dict round trip) with a new world size.
    Returns the sequence of global batches as multisets read by all ranks."""
    cursor = Cursor(seed=order.seed, num_samples=order.num_samples)
    batches, step = [], 0
    for steps, world in plan:
        cursor = Cursor.from_state(cursor.state_dict(), order.num_samples)  # restart
        for _ in range(steps):
            if step == total_steps:
                break
            reads = []
            for rank in range(world):
                reads += batch_for_rank(order, cursor.position, global_batch, world, rank)
            batches.append(reads)
            cursor.position += global_batch
            step += 1
    return batches


def test_restarts_with_changing_world_sizes_keep_order_and_exactly_once():
    """Acceptance (issue 3): restarts at 3 random points, world sizes 1, 2, 3 before/after."""
    order = GlobalOrder(SHARDS * 3, seed=11, partitions=6, block_shards=4)  # 120 samples
    global_batch, epochs = 12, 3
    total = epochs * order.num_samples // global_batch
    reference = _run(order, global_batch, total, [(total, 1)])
    rng = random.Random(0)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, total), 3))
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        worlds = [rng.choice([1, 2, 3]) for _ in lengths]
        got = _run(order, global_batch, total, list(zip(lengths, worlds, strict=True)))
        assert got == reference, (cuts, worlds)
        stream = [s for batch in got for s in batch]
        for e in range(epochs):
            seen = Counter(stream[e * order.num_samples : (e + 1) * order.num_samples])
            assert set(seen.values()) == {1} and len(seen) == order.num_samples


def test_rank_slices_and_bad_input():
    assert rank_slice(12, 3, 2) == (8, 12)
    with pytest.raises(ValueError, match="does not split over 5 ranks"):
        rank_slice(12, 5, 0)
    with pytest.raises(ValueError, match="rank 3 is not in a world of 3"):
        rank_slice(12, 3, 3)
    with pytest.raises(ValueError, match="at least one sample"):
        GlobalOrder([0, 0], seed=0)
    with pytest.raises(ValueError, match="dataset of 40 samples, this one has 41"):
        Cursor.from_state({"seed": 0, "position": 3, "num_samples": 40}, 41)


def test_fractional_epochs_and_cursor_epoch():
    order = GlobalOrder(SHARDS, seed=3)
    cursor = Cursor(seed=3, position=10, num_samples=order.num_samples)
    assert cursor.epoch() == pytest.approx(0.25)
    quarter = order.samples(0, 10)
    assert len(set(quarter)) == 10


def test_each_rank_reads_its_own_partitions_and_its_plan_covers_every_read():
    """Rank r of W reads only partitions [rP/W, (r+1)P/W), except in the batch that crosses an
    epoch boundary; every sample it reads of its own partitions is in a planned use of that
    shard at that item (so the cache holds it then)."""
    order = GlobalOrder(SHARDS * 5, seed=3, partitions=6, block_shards=2)  # 200 samples
    n, batch, accum = order.num_samples, 12, 2
    steps = 3 * n // batch
    for world in (1, 2, 3):
        per = batch // world
        strays = 0
        for rank in range(world):
            uses = list(rank_uses(order, batch, world, rank, 0, steps, accum))
            assert uses == sorted(uses)
            owned = order.owned(world, rank)
            for step in range(steps):
                for micro in range(accum):
                    item, lo = step * accum + micro, rank * per + micro * per // accum
                    w = order.window(step * batch, batch, lo, lo + per // accum)
                    for shard, part in zip(order.locate_many(w.ids)[0].tolist(),
                                           w.partitions.tolist(), strict=True):  # fmt: skip
                        if part not in owned:
                            strays += 1
                            crossing = (step * batch) // n != ((step + 1) * batch - 1) // n
                            assert crossing, (world, rank, step)
                            continue
                        assert any(u.shard == shard and u.first_item <= item <= u.last_item
                                   for u in uses), (world, rank, item, shard)  # fmt: skip
        crossings = sum((s * batch) // n != ((s + 1) * batch - 1) // n for s in range(steps))
        assert strays <= crossings * batch  # at most one batch per epoch; none with one rank
        assert world > 1 or strays == 0


def _downloads(order, batch, world, steps):
    """Shard downloads of every rank when each shard goes as soon as its use ends."""
    total = 0
    for rank in range(world):
        held, ends = {}, []
        for use in rank_uses(order, batch, world, rank, 0, steps, 1):
            while ends and ends[0][0] < use.first_item:
                _, shard = heapq.heappop(ends)
                held[shard] -= 1
                if not held[shard]:
                    del held[shard]
            total += use.shard not in held
            held[use.shard] = held.get(use.shard, 0) + 1
            heapq.heappush(ends, (use.last_item, use.shard))
    return total


@pytest.mark.parametrize("world", [1, 2, 3])
def test_an_epoch_downloads_each_shard_once_plus_one_per_rank_boundary(world):
    """Shards split between partitions of one rank are read at the same time (odd partitions
    run backwards), so only the W - 1 splits between ranks cost a second download."""
    order = GlobalOrder([9] * 64, seed=1, partitions=6, block_shards=4)
    assert _downloads(order, 12, world, order.num_samples // 12) <= 64 + world - 1


def test_owned_partitions_and_bad_world_sizes():
    order = GlobalOrder(SHARDS, seed=0, partitions=6)
    assert [list(order.owned(3, r)) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="4 ranks do not divide 6 partitions"):
        order.owned(4, 0)
