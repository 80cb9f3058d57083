"""Sharded AGC: fragments split anywhere across simulated ranks give the reference AGC."""

import pytest
import torch

from pipeline.optim.agc_sharded import Fragment, ShardedAGC
from tests.builders import agc_zoo, reference_agc


def _split(numel: int, ranks: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """Random contiguous [start, end) pieces of a flattened tensor, some possibly empty."""
    cuts = sorted(torch.randint(0, numel + 1, (ranks - 1,), generator=gen).tolist())
    bounds = [0, *cuts, numel]
    return [(bounds[r], bounds[r + 1]) for r in range(ranks)]


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
@pytest.mark.parametrize("clipping", [0.01, 0.16])
def test_fragments_across_ranks_equal_reference(ranks, clipping):
    params, grads = agc_zoo()
    gen = torch.Generator().manual_seed(ranks)
    pieces = [_split(p.numel(), ranks, gen) for p in params]
    work = [g.clone() for g in grads]

    def frags(rank: int) -> list[Fragment]:
        out = []
        for i, (p, g) in enumerate(zip(params, work, strict=True)):
            a, b = pieces[i][rank]
            if b > a:
                out.append(Fragment(i, a, g.view(-1)[a:b], p.reshape(-1)[a:b]))
        return out

    # Simulate the all-reduce: every rank's partial norms summed, as dist.all_reduce does.
    agcs = [
        ShardedAGC([p.shape for p in params], lambda r=r: frags(r), clipping) for r in range(ranks)
    ]
    local = [agc.fragments() for agc in agcs]
    norms = sum(agc.local_norms(f) for agc, f in zip(agcs, local, strict=True))
    stats = [agc.apply(f, norms) for agc, f in zip(agcs, local, strict=True)]
    for p, g, out in zip(params, grads, work, strict=True):
        torch.testing.assert_close(out, reference_agc(p, g, clipping), rtol=1e-5, atol=1e-7)
    assert 0 < stats[0].clipped_units < stats[0].total_units  # the zoo clips some, not all
    assert len({(x.clipped_units, x.total_units) for x in stats}) == 1  # every rank agrees


def test_single_rank_call_clips_in_place_and_counts():
    params, grads = agc_zoo()
    work = [g.clone() for g in grads]
    frags = [
        Fragment(i, 0, g.view(-1), p.reshape(-1))
        for i, (p, g) in enumerate(zip(params, work, strict=True))
    ]
    stats = ShardedAGC([p.shape for p in params], lambda: frags, 0.01)()
    for p, g, out in zip(params, grads, work, strict=True):
        torch.testing.assert_close(out, reference_agc(p, g, 0.01), rtol=1e-5, atol=1e-7)
    assert stats.total_units == sum(p.shape[0] if p.ndim >= 2 else 1 for p in params)
    assert 0 < stats.clipped_units < stats.total_units and 0 < stats.fraction < 1


def test_commit_receives_the_scaled_copy():
    params, grads = agc_zoo()
    committed = {}
    copies = [g.clone().view(-1) for g in grads]
    frags = [
        Fragment(i, 0, c, p.reshape(-1), commit=lambda x, i=i: committed.__setitem__(i, x.clone()))
        for i, (p, c) in enumerate(zip(params, copies, strict=True))
    ]
    ShardedAGC([p.shape for p in params], lambda: frags, 0.01)()
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        torch.testing.assert_close(committed[i].view_as(g), reference_agc(p, g, 0.01))
