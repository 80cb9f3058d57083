"""Where each worker of a run sits: its node rank and local rank, as Ray Train assigned them.

Recorded in the summary and MLflow, so a multi-node run shows it ran multi-node (DeepSpeed's
node-local paths follow LOCAL_RANK; the process group spans the nodes).
"""

from __future__ import annotations

import socket

import torch.distributed as dist


def placement(ctx) -> list[dict]:
    """One entry per world rank, in rank order (a collective: every rank calls it)."""
    mine = {"rank": ctx.get_world_rank(), "node_rank": ctx.get_node_rank(),
            "local_rank": ctx.get_local_rank(), "host": socket.gethostname()}  # fmt: skip
    return gather(mine)


def gather(value) -> list:
    """Every rank's `value`, in rank order (a collective; just [value] without a group)."""
    if not dist.is_initialized():
        return [value]
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return every


def nodes(workers: list[dict]) -> int:
    return len({w["node_rank"] for w in workers})


def describe(workers: list[dict]) -> str:
    n = nodes(workers)
    return f"{len(workers)} worker{'s' if len(workers) != 1 else ''} on {n} node{'s' if n != 1 else ''}"
