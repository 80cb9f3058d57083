"""Global order and cursor: exactly once per epoch, world-size independent, exact resume."""

import random
from collections import Counter

import pytest

from pipeline.data.order import Cursor, GlobalOrder, batch_for_rank, rank_slice

SHARDS = [7, 3, 10, 1, 9, 6, 4]  # uneven, 40 samples


@pytest.mark.parametrize("block_shards", [1, 3, 100])
def test_every_epoch_is_a_permutation(block_shards):
    order = GlobalOrder(SHARDS, seed=5, block_shards=block_shards)
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
    blocks, starts = a._epoch_layout(0)
    first = a.samples(0, starts[1])
    assert {a.locate(i).shard for i in first} == set(blocks[0])


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
    order = GlobalOrder(SHARDS * 3, seed=11, block_shards=4)  # 120 samples
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
