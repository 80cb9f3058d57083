"""2-worker DeepSpeed ZeRO-2 step vs 2-worker plain DDP step, same model, same run; and the share
of the ZeRO-2 step spent in AGC on the averaged gradient (all-reduce of unit norms included).

    python -m benchmarks.zero_step                      # nfnet_f0 at 64 px, micro-batch 4, ~2 min

Both sides: SGD Nesterov + weight-decay groups + AGC, gloo on CPU, one thread per worker, the
same batches; medians over `repeats` steps after `warmup`. DDP clips with the single-process
AGC (every rank holds the whole averaged gradient there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

STEPS_WARMUP = 2


def _batches(n: int, micro: int, res: int, classes: int):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(micro, 3, res, res, generator=g),
             torch.randint(0, classes, (micro,), generator=g)) for _ in range(n)]  # fmt: skip


def _worker(rank: int, world: int, name: str, res: int, micro: int, repeats: int, out: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.models import create_model
    from pipeline.optim.agc import adaptive_grad_clip_
    from pipeline.optim.param_groups import agc_parameters, weight_decay_groups
    from pipeline.train.components import OptimizerSection
    from pipeline.train.worker.engine import build_engine, deepspeed_config

    steps = STEPS_WARMUP + repeats
    data = _batches(steps, micro, res, 1000)
    result = {}

    torch.manual_seed(0)
    model = create_model(name).train()
    params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, deepspeed_config(micro, 1, world, 2, "fp32", False, params),
                          0.1, OptimizerSection(weight_decay=1e-5))  # fmt: skip
    agc_call = engine.agc.__call__
    agc_times: list[float] = []

    def timed_agc():
        start = time.perf_counter()
        stats = agc_call()
        agc_times.append(time.perf_counter() - start)
        return stats

    engine.agc = timed_agc
    times = []
    for x, y in data:
        dist.barrier()
        start = time.perf_counter()
        engine.micro_step(F.cross_entropy(engine.engine(x), y))
        times.append(time.perf_counter() - start)
    result["zero2_step_s"] = statistics.median(times[STEPS_WARMUP:])
    result["agc_s"] = statistics.median(agc_times[STEPS_WARMUP:])

    torch.manual_seed(0)
    model = create_model(name).train()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(weight_decay_groups(model, 1e-5), lr=0.1, momentum=0.9, nesterov=True)
    clip = agc_parameters(model)
    times = []
    for x, y in data:
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        adaptive_grad_clip_(clip, 0.01)
        opt.step()
        times.append(time.perf_counter() - start)
    result["ddp_step_s"] = statistics.median(times[STEPS_WARMUP:])
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def run(name: str = "nfnet_f0", res: int = 64, micro: int = 4, repeats: int = 6) -> dict:
    from pipeline.testing.spawn import spawn

    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        spawn(_worker, 2, name, res, micro, repeats, tmp.name)
        with open(tmp.name) as f:
            r = json.load(f)
    return {
        "model": name, "res": res, "micro_batch_per_worker": micro, "workers": 2, **r,
        "zero2_over_ddp": r["zero2_step_s"] / r["ddp_step_s"],
        "agc_share_of_zero2_step": r["agc_s"] / r["zero2_step_s"],
    }  # fmt: skip


def markdown(r: dict) -> str:
    return (
        f"{r['model']} at {r['res']} px, micro-batch {r['micro_batch_per_worker']} x 2 workers"
        f" (gloo, 1 thread each): ZeRO-2 step {r['zero2_step_s'] * 1e3:.0f} ms, DDP step"
        f" {r['ddp_step_s'] * 1e3:.0f} ms -> ZeRO-2 / DDP = {r['zero2_over_ddp']:.3f};"
        f" AGC under ZeRO-2 {r['agc_s'] * 1e3:.1f} ms = {r['agc_share_of_zero2_step']:.2%}"
        " of the step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nfnet_f0")
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    print(markdown(run(args.model, args.res, args.micro, args.repeats)))


if __name__ == "__main__":
    main()
