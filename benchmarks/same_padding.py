"""What TensorFlow SAME padding (`padding="same"`, for DeepMind's weights) costs against the
default symmetric padding: NFNet-F0 forward+backward, interleaved in one run. SAME pads each
strided conv's input with F.pad (a copy) instead of inside the convolution."""

from __future__ import annotations

import statistics

import torch

from benchmarks.model_step import train_step_fn
from benchmarks.timing import time_call
from pipeline.models import create_model


def run(name: str = "nfnet_f0", res: int = 192, batch: int = 8, repeats: int = 5) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))
    steps = {p: train_step_fn(create_model(name, padding=p).train(), x, y)
             for p in ("symmetric", "same")}  # fmt: skip
    times: dict[str, list[float]] = {p: [] for p in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for p, step in steps.items():
            times[p].append(time_call(step, 1, warmup=0)["median_s"])
    out = {"model": name, "res": res, "batch": batch, "threads": torch.get_num_threads()}
    for p, samples in times.items():
        out[f"{p}_step_s"] = statistics.median(samples)
    out["same_over_symmetric"] = out["same_step_s"] / out["symmetric_step_s"]
    return out
