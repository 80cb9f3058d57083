"""NFNet forward+backward throughput: our fast model versus the naive reference, same run.

The two models are interleaved (fast, naive, fast, naive, ...) so machine noise hits both alike.
"""

from __future__ import annotations

import torch

from benchmarks.naive_nfnet import NaiveNFNet
from benchmarks.timing import time_call
from pipeline.models import create_model


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    return step


def run(name: str = "nfnet_f0", res: int = 192, batch: int = 8, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    fast = create_model(name).train()
    naive = NaiveNFNet(fast).train()
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))
    fast_step, naive_step = train_step_fn(fast, x, y), train_step_fn(naive, x, y)
    fast_t, naive_t = [], []
    fast_step(), naive_step()  # warm-up (allocator, first-call dispatch)
    for _ in range(repeats):
        fast_t.append(time_call(fast_step, 1, warmup=0)["median_s"])
        naive_t.append(time_call(naive_step, 1, warmup=0)["median_s"])
    fast_s, naive_s = sorted(fast_t)[len(fast_t) // 2], sorted(naive_t)[len(naive_t) // 2]
    return {
        "model": name,
        "res": res,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "fast_step_s": fast_s,
        "naive_step_s": naive_s,
        "fast_img_per_s": batch / fast_s,
        "naive_img_per_s": batch / naive_s,
        "speedup": naive_s / fast_s,
    }
