"""The trainer without Ray: this process's rank in a gloo group (`spawn`, or a world of one),
with checkpoints under `<run.dir>/local_checkpoints/step_<N>/`. A checkpoint counts once every
rank's part is in it and rank 0 has marked it complete, as Ray registers one."""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.train.worker import topology
from pipeline.train.worker.context import WorkerContext

COMPLETE = "COMPLETE"


def local_context(run_dir: str) -> WorkerContext:
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("gloo", rank=int(os.environ.get("RANK", 0)),
                                world_size=int(os.environ.get("WORLD_SIZE", 1)))  # fmt: skip
    rank, world = dist.get_rank(), dist.get_world_size()
    root = Path(run_dir) / "local_checkpoints"

    @contextmanager
    def latest():
        done = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
        yield str(done[-1]) if done else None

    def report(step: int, directory: str) -> None:
        target = root / f"step_{step:08d}"
        shutil.copytree(directory, target, dirs_exist_ok=True)
        dist.barrier()
        if rank == 0:
            (target / COMPLETE).touch()
        dist.barrier()

    me = {"rank": rank, "node_rank": 0, "local_rank": rank, "host": socket.gethostname()}
    return WorkerContext(rank, world, world, torch.device("cpu"), topology.gather(me), latest,
                         report)  # fmt: skip
