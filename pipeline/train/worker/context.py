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
    # Whether the cluster announced that a node of this run is being preempted (every rank asks
    # once per step; the trainer agrees on the answers).
    drain_notice: Callable[[], bool] = lambda: False


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

    def drain_notice() -> bool:
        """Whether Ray's PreemptionWatcher marked this worker (it marks every worker of the run
        when one of their nodes is drained for preemption). Read from this worker's own train
        context: the public `ray.train.get_preemption_info()` is a barrier through an actor,
        4.2 ms per call with 2 workers here, too much to pay every step at scale; the trainer's
        all-reduce agrees on the answer instead."""
        from ray.train.v2._internal.execution.context import get_train_context

        return get_train_context().preemption_context.preemption_info is not None

    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_world_size(),
                         device, topology.placement(ctx), latest, report, drain_notice)  # fmt: skip


def scratch_dir():
    """Where a rank writes its part of a checkpoint before handing it over."""
    return tempfile.TemporaryDirectory(prefix="nfscale-ckpt-")
