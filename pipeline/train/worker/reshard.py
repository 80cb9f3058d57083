"""Resume a ZeRO checkpoint on another number of workers (elastic resume).

DeepSpeed 0.19 refuses to load ZeRO-partitioned optimizer state under a new data-parallel size,
and its universal-checkpoint converter only knows Adam's state. Our optimizer is SGD with
momentum, so the state that matters is two tensors per parameter: the fp32 master weight and
the momentum buffer. Both are stored in the same flat, partitioned layout, so DeepSpeed's own
zero_to_fp32 merge (which reassembles fp32 weights from the shards of any world size) also
reassembles the momentum when handed the momentum partitions instead.

Loading then writes each full tensor into the new engine's partitions through DeepSpeed's
fragment API (`safe_set_full_fp32_param` / `safe_set_full_optimizer_state`), which every
ZeRO stage implements, and refreshes the working copy of the weights from the fp32 masters.

Every rank reads every shard: memory for one full copy of weights and momentum per rank, once.
Stage 0 needs none of this: its checkpoint holds the whole optimizer state.
"""

from __future__ import annotations

from pathlib import Path

import torch

MOMENTUM = "momentum_buffer"


def saved_world_size(ds_dir: Path) -> int | None:
    """The data-parallel size a ZeRO 1-3 checkpoint was written with (None: stage 0)."""
    shards = list(Path(ds_dir).glob("*_optim_states.pt"))
    return len(shards) or None


def _momentum_groups(optim: dict, stage: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """This shard's momentum partitions, laid out like its fp32 partitions (zeros before the
    first update, when SGD has not created them yet)."""
    if stage <= 2:
        saved = optim["base_optimizer_state"]
        # torch's state_dict (the padded partitions) or DeepSpeed's elastic list, one per group
        states = saved["state"] if isinstance(saved, dict) else dict(enumerate(saved))
    else:
        states = optim["optimizer_state_dict"]["state"]
    out = []
    for i, fp32 in enumerate(like):
        m = states.get(i, {}).get(MOMENTUM)
        out.append(torch.zeros_like(fp32) if m is None else m[: fp32.numel()])  # drop padding
    return out


def consolidated(ds_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(fp32 weights and buffers, momentum) by parameter name, from a ZeRO 1-3 checkpoint."""
    from deepspeed.checkpoint.constants import (
        FP32_FLAT_GROUPS,
        OPTIMIZER_STATE_DICT,
        PARAM_ALIGNMENT_PADDINGS,
        PARTITION_COUNT,
        SINGLE_PARTITION_OF_FP32_GROUPS,
        ZERO_STAGE,
    )
    from deepspeed.utils import zero_to_fp32 as z

    models = z.parse_model_states(z.get_model_state_files(str(ds_dir)))
    shards = [torch.load(f, map_location="cpu")[OPTIMIZER_STATE_DICT]
              for f in z.get_optim_files(str(ds_dir))]  # fmt: skip
    stage, world = shards[0][ZERO_STAGE], shards[0][PARTITION_COUNT]
    world = max(world) if isinstance(world, list) else world
    if world != len(shards):
        raise RuntimeError(f"{ds_dir} holds {len(shards)} optimizer shards of a {world}-rank run")
    key = SINGLE_PARTITION_OF_FP32_GROUPS if stage <= 2 else FP32_FLAT_GROUPS
    fp32 = [s[key] for s in shards]
    momentum = [_momentum_groups(s, stage, f) for s, f in zip(shards, fp32, strict=True)]

    def merge(groups: list) -> dict[str, torch.Tensor]:
        if stage <= 2:
            paddings = shards[0].get(PARAM_ALIGNMENT_PADDINGS)
            merged = z._get_fp32_state_dict_from_zero2_checkpoint(world, groups, models, False,
                                                                  paddings)  # fmt: skip
        else:
            merged = z._get_fp32_state_dict_from_zero3_checkpoint(world, groups, models, False)
        return z.to_torch_tensor(merged)

    weights = merge(fp32)
    buffers = set(models[0].buffers)
    return weights, {k: v for k, v in merge(momentum).items() if k not in buffers}


def link_momentum(engine) -> None:
    """Make every parameter's momentum reachable through DeepSpeed's fragment API.

    SGD creates its momentum at the first step, so it is created here (zeros) when missing.
    ZeRO 1/2 link the fragments once, after the first param group's first step, which misses
    the other groups (we have two: with and without weight decay); so they are linked again."""
    optimizer = engine.optimizer
    stage = engine.zero_optimization_stage()
    flats = (optimizer.single_partition_of_fp32_groups if stage in (1, 2)
             else optimizer.fp32_partitioned_groups_flat)  # fmt: skip
    for flat in flats:
        optimizer.optimizer.state[flat].setdefault(MOMENTUM, torch.zeros_like(flat))
    if stage in (1, 2):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def load(engine, ds_dir: Path) -> None:
    """Set `engine` (any ZeRO stage 1-3, any world size) to the checkpoint's weights and momentum."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    weights, momentum = consolidated(ds_dir)
    stage = engine.zero_optimization_stage()
    optimizer = engine.optimizer  # DeepSpeed's ZeRO wrapper around our SGD
    link_momentum(engine)
    module = engine.module
    with torch.no_grad():
        for name, buf in module.named_buffers():
            buf.copy_(weights[name])
        for name, p in module.named_parameters():
            if stage in (1, 2):
                p.copy_(weights[name])  # every rank holds the whole working copy
            safe_set_full_fp32_param(p, weights[name].to(p.device))
            safe_set_full_optimizer_state(p, momentum[name].to(p.device), MOMENTUM)
    if stage == 3:  # the working partitions from the fp32 masters, then the persistent params
        for sub_group in range(len(optimizer.fp16_groups)):
            optimizer._reassign_or_swap_out_partitioned_parameters(sub_group)
        optimizer.checkpoint_event_epilogue()
