"""Learning-rate schedules (SPEC §4): linear warmup from 0, then cosine decay to 0."""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak LR at ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: 0.1 * B / 256 gives 1.6 at B = 4096."""
    return base_lr * global_batch / reference_batch


@dataclass(frozen=True)
class WarmupCosine:
    """The LR at each step: `peak` x warmup_cosine(step, steps, warmup)."""

    peak: float
    steps: int
    warmup: int

    def __call__(self, step: int) -> float:
        return self.peak * warmup_cosine(step, self.steps, self.warmup)
