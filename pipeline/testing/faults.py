"""Fault injection for the reliability suite (tests, `make chaos`), as a trainer callback the
tests register through the config; the production trainer knows nothing of it:

    train.callbacks=[{target: "pipeline.testing.faults:Faults", args: {kill: "step:7"}}]

The faults are real, so the real detection, restart and resume paths run. All of them hit the
last rank only (one rank's fault must be agreed on by every rank):
  nonfinite_steps="5,8-10"   its images are NaN on those 0-based steps, so their loss and the
      averaged gradient are not finite (a bad batch, an overflow)
  kill="checkpoint:4,step:7"  it SIGKILLs itself once at each point: `checkpoint:N` after
      writing its part of the step-N checkpoint, before handing it over (mid-write: the other
      rank's part may be in storage already); `step:N` after the first backward of 0-based
      step N (mid-step, gradients half accumulated)
  term="6"                    it sends itself SIGTERM (a preemption notice) after the first
      backward of those 0-based steps
A marker under <run.dir>/faults/ records each kill and notice, so a restarted worker goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal

import fsspec
import torch

from pipeline.log import EVERY_RANK
from pipeline.train.worker.callbacks import Callback

log = logging.getLogger(__name__)


def spec(**args: str) -> dict:
    """The train.callbacks entry of these faults, e.g. spec(kill="step:7")."""
    return {"target": f"{__name__}:Faults", "args": args}


def override(**args: str) -> str:
    """The same as a command-line override."""
    return "train.callbacks=" + json.dumps([spec(**args)])


def parse_steps(spec: str) -> frozenset[int]:
    """'5,8-10' -> {5, 8, 9, 10}."""
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        first, _, last = part.partition("-")
        steps.update(range(int(first), int(last or first) + 1))
    return frozenset(steps)


def parse_kills(spec: str) -> frozenset[tuple[str, int]]:
    """'checkpoint:4,step:7' -> {("checkpoint", 4), ("step", 7)}."""
    points = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        where, _, step = part.partition(":")
        if where not in ("checkpoint", "step"):
            raise ValueError(f"kill: unknown kill point {where!r}; expected checkpoint or step")
        points.add((where, int(step)))
    return frozenset(points)


class Faults(Callback):
    def __init__(self, nonfinite_steps: str = "", kill: str = "", term: str = "") -> None:
        self.nonfinite = parse_steps(nonfinite_steps)
        self.kills = parse_kills(kill)
        self.terms = parse_steps(term)
        self.last_rank, self.run_dir = False, ""

    def on_train_start(self, trainer):
        self.last_rank, self.run_dir = trainer.rank == trainer.world - 1, trainer.cfg.run.dir

    def on_micro_batch(self, trainer, step: int, images: torch.Tensor) -> torch.Tensor:
        hit = self.last_rank and step in self.nonfinite
        return images * float("nan") if hit else images

    def after_backward(self, trainer, step: int) -> None:
        self._signal("step", step, signal.SIGKILL, ("step", step) in self.kills)
        self._signal("term", step, signal.SIGTERM, step in self.terms)

    def on_checkpoint_written(self, trainer, step: int) -> None:
        self._signal("checkpoint", step, signal.SIGKILL, ("checkpoint", step) in self.kills)

    def _signal(self, where: str, step: int, sig: signal.Signals, armed: bool) -> None:
        if not (self.last_rank and armed):
            return
        name = "killed" if sig == signal.SIGKILL else "terminated"
        fs, path = fsspec.core.url_to_fs(f"{self.run_dir.rstrip('/')}/faults/{name}-{where}-{step}")
        if fs.exists(path):  # this happened before this restart
            return
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, b"")
        log.info(f"fault injection: {sig.name} at {where} {step}", extra=EVERY_RANK)
        os.kill(os.getpid(), sig)
