"""Fault injection for the reliability suite (tests, `make chaos`): inert unless one of its
environment variables is set where the job is launched (launch passes them on to the workers).
The faults are real, so the real detection, restart and resume paths run:

  NFSCALE_FAULT_NONFINITE_STEPS="5,8-10"   the last rank's images are NaN on those 0-based
      steps, so their loss and averaged gradient are not finite (a bad batch, an overflow)
  NFSCALE_FAULT_KILL="checkpoint:4,step:7"  the last rank SIGKILLs itself once at each point:
      `checkpoint:N` after writing its part of the step-N checkpoint, before handing it to Ray
      (mid-write: the other rank's part may be in storage already); `step:N` after the first
      backward of 0-based step N (mid-step, gradients half accumulated). A marker under
      <run.dir>/faults/ records each kill, so the restarted worker goes on.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import fsspec
import torch

NONFINITE_STEPS = "NFSCALE_FAULT_NONFINITE_STEPS"
KILL = "NFSCALE_FAULT_KILL"
ENV = (NONFINITE_STEPS, KILL)


def parse_steps(spec: str) -> frozenset[int]:
    """'5,8-10' -> {5, 8, 9, 10}."""
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        steps.update(range(int(first), int(last or first) + 1))
    return frozenset(steps)


def parse_kills(spec: str) -> frozenset[tuple[str, int]]:
    """'checkpoint:4,step:7' -> {("checkpoint", 4), ("step", 7)}."""
    points = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        where, _, step = part.partition(":")
        if where not in ("checkpoint", "step"):
            raise ValueError(f"{KILL}: unknown kill point {where!r}; expected checkpoint or step")
        points.add((where, int(step)))
    return frozenset(points)


@dataclass(frozen=True)
class Faults:
    nonfinite: frozenset[int]
    kills: frozenset[tuple[str, int]]
    last_rank: bool
    run_dir: str

    @classmethod
    def from_env(cls, rank: int, world: int, run_dir: str) -> Faults:
        return cls(parse_steps(os.environ.get(NONFINITE_STEPS, "")),
                   parse_kills(os.environ.get(KILL, "")), rank == world - 1, run_dir)  # fmt: skip

    def poison(self, images: torch.Tensor, step: int) -> torch.Tensor:
        hit = self.last_rank and step in self.nonfinite  # one rank: the skip must be agreed
        return images * float("nan") if hit else images

    def kill(self, where: str, step: int) -> None:
        if not self.last_rank or (where, step) not in self.kills:
            return
        fs, path = fsspec.core.url_to_fs(f"{self.run_dir.rstrip('/')}/faults/killed-{where}-{step}")
        if fs.exists(path):  # this kill happened before this restart
            return
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, b"")
        print(f"fault injection: SIGKILL at {where} {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
