"""Fault injection for the reliability suite (tests, `make chaos`): inert unless its environment
variable is set where the job is launched (launch passes it on to the workers).

NFSCALE_FAULT_NONFINITE_STEPS="5,8-10" makes the last rank's images NaN on those 0-based steps,
so the loss and the averaged gradient of those steps are not finite, as after a bad batch or an
overflow: the real detection, skip and stop paths run, not a simulation of them.
"""

from __future__ import annotations

import os

import torch

NONFINITE_STEPS = "NFSCALE_FAULT_NONFINITE_STEPS"


def parse_steps(spec: str) -> frozenset[int]:
    """'5,8-10' -> {5, 8, 9, 10}."""
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        steps.update(range(int(first), int(last or first) + 1))
    return frozenset(steps)


def nonfinite_steps() -> frozenset[int]:
    return parse_steps(os.environ.get(NONFINITE_STEPS, ""))


def poison(images: torch.Tensor, step: int, steps: frozenset[int], rank: int, world: int):
    """NaN images on the last rank at the chosen steps (one rank: the skip must be agreed)."""
    return images * float("nan") if step in steps and rank == world - 1 else images
