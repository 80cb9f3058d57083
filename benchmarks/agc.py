"""AGC cost: share of an F0 training step, and versus a per-parameter Python loop."""

from __future__ import annotations

import torch

from benchmarks.timing import time_call
from pipeline.models import create_model
from pipeline.optim.agc import adaptive_grad_clip_
from pipeline.optim.param_groups import agc_parameters


def per_parameter_loop_agc(params, clipping=0.01, eps=1e-3):
    """The common straightforward implementation: one Python iteration per parameter."""
    for p in params:
        g = p.grad
        if p.ndim <= 1:
            p_norm, g_norm = p.detach().norm(), g.norm()
        else:
            dims = tuple(range(1, p.ndim))
            p_norm = p.detach().pow(2).sum(dims, keepdim=True).sqrt()
            g_norm = g.pow(2).sum(dims, keepdim=True).sqrt()
        max_norm = p_norm.clamp_min(eps) * clipping
        clipped = g * (max_norm / g_norm.clamp_min(1e-6))
        g.copy_(torch.where(g_norm > max_norm, clipped, g))


def run(name: str = "nfnet_f0", res: int = 192, batch: int = 8, repeats: int = 10) -> dict:
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    step_s = time_call(step, repeats=2)["median_s"]
    params = agc_parameters(model)
    saved = [p.grad.clone() for p in params]

    def restore():
        for p, g in zip(params, saved, strict=True):
            p.grad.copy_(g)

    def timed(fn):
        def call():
            restore()
            fn()

        restore_s = time_call(restore, repeats)["median_s"]
        return max(0.0, time_call(call, repeats)["median_s"] - restore_s)

    ours = timed(lambda: adaptive_grad_clip_(params))
    ours_foreach = timed(lambda: adaptive_grad_clip_(params, foreach=True))
    loop = timed(lambda: per_parameter_loop_agc(params))
    return {
        "model": name,
        "res": res,
        "batch": batch,
        "params": sum(p.numel() for p in params),
        "step_s": step_s,
        "agc_default_s": ours,
        "agc_foreach_s": ours_foreach,
        "agc_loop_s": loop,
        "agc_share_of_step": ours / step_s,
        "loop_share_of_step": loop / step_s,
    }
