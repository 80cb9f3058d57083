"""PreciseBN: replace BatchNorm running averages by population statistics over N batches.

The EMA running statistics of BN lag the weights and depend on the last few batches; for a fair
NF-vs-BN comparison at any batch size, we recompute them (Wu & Johnson 2021, "Rethinking 'Batch'
in BatchNorm"). As in fvcore/detectron2, one pass runs the model in train mode (every BN layer
normalises with its batch statistics) while we record each BN layer's input; unlike a mean of
per-batch variances, we pool exactly (Chan et al. merge in float64), so the result is the mean and
unbiased variance of everything each layer saw, whatever the batch sizes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _PooledMoments:
    """Running count / mean / M2 per channel, merged batch by batch (numerically stable)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.ndim) if d != 1]
        x = x.detach().to(torch.float64)
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        m2 = ((x - mean.view([1, -1] + [1] * (x.ndim - 2))) ** 2).sum(dim=dims)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        return self.m2 / max(self.count - 1, 1)


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int) -> int:
    """Set every BN layer's running_mean/var to the population statistics of its inputs over
    ``num_batches`` batches; returns the number of batches used. Model mode is restored."""
    layers = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not layers:
        return 0
    moments = {m: _PooledMoments() for m in layers}
    hooks = [
        m.register_forward_pre_hook(lambda mod, inp: moments[mod].update(inp[0])) for m in layers
    ]
    was_training = model.training
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            model(batch)
            used += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if used == 0:
        raise ValueError("recompute_bn_stats got no batches; expected at least one")
    for m, mom in moments.items():
        m.running_mean.copy_(mom.mean.to(m.running_mean.dtype))
        m.running_var.copy_(mom.variance().to(m.running_var.dtype))
        m.num_batches_tracked.fill_(used)
    return used
