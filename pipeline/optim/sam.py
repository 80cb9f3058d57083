"""Sharpness-Aware Minimisation (SPEC §5), the variant the NFNet papers use across replicas.

For each micro-batch on each replica r:

    g_r = grad L_r(w)                 on this replica's own micro-batch (or its first
                                      `ascent_fraction`), NOT averaged across replicas
    e_r = rho * g_r / (||g_r||_2 + 1e-12)      one global norm over every trainable tensor
    backward of L_r(w + e_r)          through the engine: averaged across replicas, then AGC'd
    w restored bit for bit            before AGC reads the weights and the optimizer steps

The ascent gradient comes from `torch.autograd.grad`, which returns gradients without
accumulating them into `.grad`, so neither DDP's nor DeepSpeed's reduction hooks fire: each
replica perturbs with its own gradient, and only the descent gradient is communicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

EPS = 1e-12


def ascent_step(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """e = rho * g / (||g|| + 1e-12), the norm taken over all tensors together."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = rho / (norm + EPS)
    return [g * scale for g in grads]


def ascent_count(batch: int, fraction: float) -> int:
    """Samples of a micro-batch used for the ascent gradient: at least one."""
    return max(1, min(batch, math.ceil(batch * fraction)))


@contextmanager
def perturbed(
    params: list[torch.nn.Parameter],
    ascent_loss: Callable[[], torch.Tensor],
    rho: float,
) -> Iterator[torch.Tensor]:
    """Inside the block the weights are w + e (from this replica's own gradient of
    `ascent_loss`); on exit they are w again, copied back rather than subtracted so no rounding
    is left behind. Yields the ascent loss (the loss at w), detached."""
    loss = ascent_loss()
    grads = torch.autograd.grad(loss, params)
    steps = ascent_step([g.detach() for g in grads], rho)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, steps)
    try:
        yield loss.detach()
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)
