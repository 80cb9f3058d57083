"""Where a trainer runs: its rank, its device, and where its checkpoints come from and go to.

`from_ray()` is the production one (a Ray Train worker; the ranks register a checkpoint once
every rank's part has arrived, and find the latest complete one on a restart: `registry`).
Tests build a `WorkerContext` of their own (`pipeline.testing.local`) to run the same trainer
without Ray.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from pipeline.train.worker import topology
from pipeline.train.worker.registry import CheckpointRegistry


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


def run_registry(run_dir: str, rank: int, keep: int) -> CheckpointRegistry:
    """Where a run's checkpoints are, whichever worker group trains it."""
    return CheckpointRegistry(f"{run_dir.rstrip('/')}/checkpoints", rank, keep)


def from_ray(use_gpu: bool, run_dir: str, keep: int) -> WorkerContext:
    """A Ray Train worker training the run in `run_dir`. Its checkpoints are registered by the
    ranks themselves (`registry`), not by Ray: a worker group may train several runs one after
    another (a sweep's lane), and Ray's registry is the group's, not the run's."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    registry = run_registry(run_dir, ctx.get_world_rank(), keep)

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
                         device, topology.placement(ctx), registry.latest, registry.report,
                         drain_notice)  # fmt: skip


def scratch_dir():
    """Where a rank writes its part of a checkpoint before handing it over."""
    return tempfile.TemporaryDirectory(prefix="nfscale-ckpt-")
