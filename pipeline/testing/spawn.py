"""Run a function in N local processes joined by a gloo process group, without Ray: the quick
way for tests and benchmarks to exercise DeepSpeed's multi-rank code paths on one machine."""

from __future__ import annotations

import os
import socket

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu",
    )  # fmt: skip
    import torch

    torch.set_num_threads(1)
    fn(rank, world, *args)


def spawn(fn, world: int, *args) -> None:
    """fn(rank, world, *args) in `world` processes; raises if any of them fails."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
