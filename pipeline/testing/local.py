"""The trainer without Ray: this process's rank in a gloo group (`spawn`, or a world of one),
with checkpoints registered by the ranks themselves under `<run.dir>/local_checkpoints/`
(`pipeline.train.worker.registry`: complete once every rank's part is in, as Ray registers one)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from pipeline.train.worker import topology
from pipeline.train.worker.context import WorkerContext
from pipeline.train.worker.registry import CheckpointRegistry


def local_context(run_dir: str, keep: int = 2) -> WorkerContext:
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("gloo", rank=int(os.environ.get("RANK", 0)),
                                world_size=int(os.environ.get("WORLD_SIZE", 1)))  # fmt: skip
    rank, world = dist.get_rank(), dist.get_world_size()
    registry = CheckpointRegistry(f"{run_dir}/local_checkpoints", rank, keep)
    me = {"rank": rank, "node_rank": 0, "local_rank": rank, "host": socket.gethostname()}
    return WorkerContext(rank, world, world, torch.device("cpu"), topology.gather(me),
                         registry.latest, registry.report)  # fmt: skip
