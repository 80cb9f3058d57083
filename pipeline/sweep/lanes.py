"""A sweep's lanes: Ray Train worker groups that stay up across points, so a point costs its
steps and not a worker group's start (fresh processes importing torch and DeepSpeed, gloo,
Ray Train's controller: about 20 of a short point's 24 s on 2 cores, BENCHMARKS.md).

Each point is still the same pretraining run: the trainer of `pipeline.train.worker.trainer`
with its own run.dir, checkpoints (`registry`: the ranks register them, so a worker group can
train one run after another), resume, MLflow run and summary. What the sweep's driver prepared
(preflight, run_config.yaml, a finished run found) is `launch.prepare`, as for a single run.

    driver --put--> PointQueue <--next/done-- lane (Ray task) -> TorchTrainer -> lane_worker x N

Every rank of a lane asks the queue for its next point (`next(lane, last)`), so no rank waits
in a collective while the driver has nothing to hand out (an LR search waits on results). The
queue keeps each lane's point in flight: when Ray restarts a lane's workers after a failure
(`cluster.max_failures`, shared by the points the lane runs), they get that point again and it
resumes from its checkpoint. A lane whose restarts are used up fails its point and ends; a
preempted lane hands its point back and ends; the driver starts another lane for the rest.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
from collections import deque

import ray
import torch
import torch.distributed as dist

from pipeline.process import setup_process
from pipeline.train.config import PretrainConfig
from pipeline.train.driver import stopped

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class PointQueue:
    """Points to run, which lane runs which, and their outcomes (one asyncio loop: no locks)."""

    def __init__(self) -> None:
        self.items: deque[dict] = deque()  # {"name", "config", "serial"}
        self.inflight: dict[str, dict] = {}  # lane -> item (with "started")
        self.results: deque[dict] = deque()
        self.lane_starts: dict[str, float] = {}  # a lane's first point's wall includes its start
        self.closed = False
        self.serial = 0
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def put(self, name: str, config: dict) -> None:
        self.serial += 1
        self.items.append({"name": name, "config": config, "serial": self.serial})
        await self._notify()

    async def lane_started(self, lane: str) -> None:
        self.lane_starts[lane] = time.monotonic()

    async def next(self, lane: str, last: int | None) -> dict | None:
        """The lane's point in flight unless this rank has run it (`last`: that point's serial),
        else the next point, or None once the queue is closed and empty."""
        async with self.changed:
            while True:
                item = self.inflight.get(lane)
                if item is not None and item["serial"] != last:
                    return item
                if item is None and self.items:
                    started = self.lane_starts.pop(lane, None) or time.monotonic()
                    item = self.items.popleft() | {"started": started}
                    self.inflight[lane] = item
                    self.changed.notify_all()
                    return item
                if item is None and self.closed:
                    return None
                await self.changed.wait()

    async def done(self, lane: str, outcome: str) -> None:
        """Rank 0 of `lane`: its point ended ('finished', 'stopped' or 'unfit')."""
        item = self.inflight.pop(lane)
        self.results.append({"name": item["name"], "status": outcome, "error": None,
                             "wall": time.monotonic() - item["started"]})  # fmt: skip
        await self._notify()

    async def hand_back(self, lane: str) -> None:
        """Rank 0 of a preempted lane: its point goes first to the next lane."""
        item = self.inflight.pop(lane)
        self.items.appendleft({k: v for k, v in item.items() if k != "started"})
        await self._notify()

    async def lane_ended(self, lane: str, error: str | None) -> None:
        """The driver: a lane's task returned; a point it still had failed with `error`."""
        item = self.inflight.pop(lane, None)
        if item is not None:
            self.results.append({"name": item["name"], "status": "failed",
                                 "error": error or "its worker group ended mid-point",
                                 "wall": time.monotonic() - item["started"]})  # fmt: skip
        await self._notify()

    async def inflight_run_dir(self, lane: str) -> str | None:
        item = self.inflight.get(lane)
        return item["config"]["run"]["dir"] if item else None

    async def result(self) -> dict:
        async with self.changed:
            while not self.results:
                await self.changed.wait()
            return self.results.popleft()

    async def close(self) -> None:
        self.closed = True
        await self._notify()


def lane_worker(config: dict) -> None:
    """Ray Train's entry point on every worker of a lane: points until the queue is closed."""
    from pipeline.train.worker import context
    from pipeline.train.worker.trainer import Trainer

    queue, lane, last = config["queue"], config["lane"], None
    for n in itertools.count(1):
        item = ray.get(queue.next.remote(lane, last))
        if item is None:
            return
        cfg = PretrainConfig.model_validate(item["config"])
        ctx = context.from_ray(cfg.cluster.use_gpu, cfg.run.dir, cfg.train.checkpoint.keep)
        setup_process(ctx.rank)
        log.info(f"{lane}: {item['name']} is point {n} on these workers")  # rank 0's shown
        trainer = Trainer(cfg, ctx)
        outcome = trainer.run()
        _destroy_engine(trainer)
        del trainer  # the point's model, optimizer state and EMA go before the next builds its own
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # on a GPU: memory back to the allocator, not held beside it
        last = item["serial"]
        if dist.is_initialized():
            dist.barrier()  # rank 0's records (summary, stop reason) are written
        if outcome == "preempted":
            if ctx.rank == 0:
                ray.get(queue.hand_back.remote(lane))
            return  # Ray places the next lane away from the drained node
        if ctx.rank == 0:
            ray.get(queue.done.remote(lane, outcome))


def _destroy_engine(trainer) -> None:
    """DeepSpeed's hooks and buffers of the point's engine (none when setup stopped early)."""
    engine = getattr(trainer, "engine", None)
    if engine is not None and hasattr(engine.engine, "destroy"):
        engine.engine.destroy()


def run_lane(config: dict, queue, lane: str, storage: str) -> str | None:
    """A lane's Ray task: its worker group until the queue is closed. Returns the reason its
    point failed when Ray's restarts are used up, else None."""
    from ray.train import TrainingFailedError

    from pipeline.train.driver.launch import torch_trainer

    cfg = PretrainConfig.model_validate(config)
    retries = cfg.cluster.max_failures
    trainer = torch_trainer(cfg, lane_worker, {"queue": queue, "lane": lane}, storage, retries)
    try:
        trainer.fit()
    except TrainingFailedError as e:
        run_dir = ray.get(queue.inflight_run_dir.remote(lane)) or cfg.run.dir
        return stopped.failure_reason(e, run_dir, retries)
    return None
