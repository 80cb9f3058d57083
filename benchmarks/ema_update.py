"""EMA update time per step: ours (pipeline/train/worker/ema.py: a flat fp32 slice per rank on the
weights' device, one foreach lerp) against the EMA before issue 16 (a whole fp32 copy on the
host, one `.cpu()` and lerp per parameter) and PyTorch's own `AveragedModel` with
`get_ema_multi_avg_fn` (what a user would reach for), on one DeepSpeed engine.

    python -m benchmarks.ema_update          # nfnet_nano0 and nfnet_f0, ZeRO-2, 1 and 2 ranks

On the CPU the host copy costs a memcpy only; on a GPU it is a device-to-host transfer per
parameter per step (F7+: 3.3 GB), which is what the device EMA removes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import time_call

MODELS = ("nfnet_nano0", "nfnet_f0")


class HostEma:
    """The EMA as it was: every rank keeps the whole model in fp32 on the host."""

    def __init__(self, engine, decay: float) -> None:
        self.decay = decay
        self.tensors = {
            n: p.detach().float().cpu().clone() for n, p in engine.module.named_parameters()
        }

    @torch.no_grad()
    def update(self, engine, step: int) -> None:
        keep = min(self.decay, (1 + step) / (10 + step))
        for name, p in engine.module.named_parameters():
            self.tensors[name].lerp_(p.detach().float().cpu(), 1.0 - keep)


def _worker(rank: int, world: int, name: str, repeats: int, out: str) -> None:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from pipeline.models import create_model
    from pipeline.train.components import OptimizerSection
    from pipeline.train.worker.ema import Ema
    from pipeline.train.worker.engine import build_engine, deepspeed_config

    torch.manual_seed(0)
    model = create_model(name, num_classes=1000)
    engine = build_engine(model, deepspeed_config(4, 1, world, 2, "fp32", use_gpu=False), 0.1,
                          OptimizerSection(weight_decay=0.0)).engine  # fmt: skip
    ours, before = Ema(engine, 0.9999), HostEma(engine, 0.9999)
    torch_ema = AveragedModel(engine.module, multi_avg_fn=get_ema_multi_avg_fn(0.9999))
    step = iter(range(10**9))
    result = {
        "ours": time_call(lambda: ours.update(engine, next(step)), repeats),
        "before (host copy)": time_call(lambda: before.update(engine, next(step)), repeats),
        "torch AveragedModel": time_call(
            lambda: torch_ema.update_parameters(engine.module), repeats
        ),
        "params": sum(p.numel() for p in engine.module.parameters()),
        "ours_bytes_per_rank": ours.flat.numel() * 4,
    }
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def run(repeats: int = 20) -> dict:
    from pipeline.testing.spawn import spawn

    results = {}
    for name in MODELS:
        for world in (1, 2):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                spawn(_worker, world, name, repeats, f.name)
                results[f"{name}, {world} rank(s)"] = json.loads(Path(f.name).read_text())
    return results


def main() -> None:
    for case, r in run().items():
        times = ", ".join(
            f"{k} {r[k]['median_s'] * 1e3:.2f} ms"
            for k in ("ours", "before (host copy)", "torch AveragedModel")
        )
        print(
            f"{case} ({r['params']:,} params, ours {r['ours_bytes_per_rank'] / 2**20:.1f} MiB/rank): {times}"
        )


if __name__ == "__main__":
    main()
