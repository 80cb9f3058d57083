"""Our NFNet-F0 against timm's (the most used public PyTorch NFNets), same run, same inputs.

timm is not a dependency: `make bench-timm` installs it without dependencies under runs/
(pipeline/testing/timm.py imports it). Benchmark-only; never used by the library.
"""

from __future__ import annotations

import statistics
import time

import torch

from pipeline.models import create_model
from pipeline.testing.timm import import_timm


def run(res: int = 192, batch: int = 8, repeats: int = 3) -> dict:
    timm = import_timm()
    torch.manual_seed(0)
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))
    models = {
        "ours_nfnet_f0": create_model("nfnet_f0"),
        "timm_dm_nfnet_f0": timm.create_model("dm_nfnet_f0"),
        "timm_nfnet_f0": timm.create_model("nfnet_f0"),
    }

    def step(model):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    for m in models.values():
        m.train()
        step(m)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):  # interleaved: machine noise hits all alike
        for name, m in models.items():
            start = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - start)
    result: dict = {"timm": timm.__version__, "res": res, "batch": batch}
    for name, samples in times.items():
        result[f"{name}_step_s"] = statistics.median(samples)
        result[f"{name}_params"] = sum(p.numel() for p in models[name].parameters())
    result["speedup_vs_timm_dm"] = (
        result["timm_dm_nfnet_f0_step_s"] / result["ours_nfnet_f0_step_s"]
    )
    return result
