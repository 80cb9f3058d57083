"""Where a trainer runs: its rank, its device, and where its checkpoints come from and go to.

`from_ray()` is the production one (a Ray Train worker: Ray registers a checkpoint once every
rank's part has arrived, and hands the latest complete one back on a restart). Tests build a
`WorkerContext` of their own (`pipeline.testing.local`) to run the same trainer without Ray.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch

from pipeline.train.worker import topology


@dataclass
class WorkerContext:
    rank: int
    world: int
    local_world: int  # workers on this node
    device: torch.device
    placement: list[dict]  # node rank and local rank of every world rank
    # The latest complete checkpoint's directory, or None, for the `with` block's duration.
    latest: Callable[[], AbstractContextManager[str | None]]
    # Hand this rank's part of the step's checkpoint (a directory it may delete afterwards) over.
    report: Callable[[int, str], None]


def from_ray(use_gpu: bool) -> WorkerContext:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    @contextmanager
    def latest() -> Iterator[str | None]:
        found = ray.train.get_checkpoint()
        if found is None:
            yield None
            return
        with found.as_directory() as d:
            yield d

    def report(step: int, directory: str) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report({"step": step}, checkpoint=checkpoint)

    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size(),
                         device, topology.placement(ctx), latest, report)  # fmt: skip


def scratch_dir():
    """Where a rank writes its part of a checkpoint before handing it over."""
    return tempfile.TemporaryDirectory(prefix="nfscale-ckpt-")
