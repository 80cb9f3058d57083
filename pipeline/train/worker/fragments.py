"""This rank's pieces of the averaged gradient and fp32 weights, for `ShardedAGC`.

Valid between `engine.backward()` on a gradient-accumulation boundary and `engine.step()`:
DeepSpeed has averaged the gradients across ranks by then and not yet applied them.

- ZeRO 1/2: DeepSpeed links each parameter to its fragment of this rank's flat fp32 partition
  (`param._hp_mapping`: the fragment's start in the flattened parameter, the fp32 master view,
  and the averaged gradient piece the optimizer will flatten into the partition's `.grad`).
- ZeRO 3: every parameter is split evenly, rank r owning elements [r * k, (r + 1) * k) of the
  flattened parameter (k = the local partition size, the last one padded); DeepSpeed's local
  API returns fp32 copies, so scaled gradients are written back with `safe_set_local_grad`.
- Stage 0 / DDP: the whole averaged gradient lives on every rank, so one full fragment each and
  no reduction (the caller passes no process group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.optim.agc_sharded import Fragment


def replicated_fragments(params: Sequence[torch.nn.Parameter]) -> list[Fragment]:
    return [
        Fragment(i, 0, p.grad.view(-1), p.detach().view(-1))
        for i, p in enumerate(params)
        if p.grad is not None
    ]


def zero12_fragments(params: Sequence[torch.nn.Parameter]) -> list[Fragment]:
    out = []
    for i, p in enumerate(params):
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:  # no piece of this parameter in this rank's partition
            continue
        address = mapping.lp_fragment_address
        grad = mapping.get_lp_grad_fragment(p._index_in_param_group).view(-1)
        if grad.numel() == p.numel() != address.numel:  # a full-size buffer: keep our piece
            grad = grad.narrow(0, address.start, address.numel)
        if grad.numel() != address.numel:
            raise RuntimeError(
                f"ZeRO gradient fragment has {grad.numel()} elements, expected {address.numel}"
            )
        out.append(Fragment(i, address.start, grad, mapping.hp_fragment.view(-1)))
    return out


def zero3_fragments(params: Sequence[torch.nn.Parameter], rank: int) -> list[Fragment]:
    from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_grad, safe_set_local_grad

    out = []
    for i, p in enumerate(params):
        local = p.ds_tensor.ds_numel  # partition size (the last rank's is padded)
        start = rank * local
        n = max(0, min(local, p.ds_numel - start))
        if n == 0:
            continue
        padded = safe_get_local_grad(p).view(-1)
        weight = safe_get_local_fp32_param(p).view(-1)[:n]
        # grad is a view of `padded`: scaling it in place updates the copy we write back
        commit = lambda _grad, p=p, padded=padded: safe_set_local_grad(p, padded)  # noqa: E731
        out.append(Fragment(i, start, padded[:n], weight, commit))
    return out


def engine_fragments(engine, params: Sequence[torch.nn.Parameter], rank: int) -> list[Fragment]:
    """Fragments for a DeepSpeed engine of any ZeRO stage."""
    stage = engine.zero_optimization_stage()
    if stage == 3:
        return zero3_fragments(params, rank)
    if stage in (1, 2):
        return zero12_fragments(params)
    return replicated_fragments(params)
