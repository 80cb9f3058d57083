"""The EMA on the device, partitioned across ranks (pipeline/train/worker/ema.py): under ZeRO-2 and
ZeRO-3 with 2 workers, its gathered average equals a single-process reference EMA of the
same weights; a rank's buffer holds its slice only; a checkpoint's whole copy resumes on
another world size."""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from pipeline.models import create_model
from pipeline.testing.spawn import spawn
from pipeline.train.worker.ema import Ema
from pipeline.train.worker.engine import build_engine, deepspeed_config
from tests.builders import HYPER, OPTIMIZER

STEPS, MICRO, CLASSES, RES, DECAY = 5, 2, 5, 32, 0.9


def _engine(world: int, stage: int):
    torch.manual_seed(0)
    model = create_model("nfnet_nano0", num_classes=CLASSES, drop_rate=0.0, stochdepth_rate=0.0)
    return build_engine(model.train(), deepspeed_config(MICRO, 1, world, stage, "fp32", use_gpu=False), HYPER["lr"], OPTIMIZER)  # fmt: skip


def _full_params(engine) -> dict[str, torch.Tensor]:
    """The whole live parameters on every rank (gathered under ZeRO-3): the reference's input."""
    import contextlib

    import deepspeed

    params = list(engine.module.parameters())
    gather = (deepspeed.zero.GatheredParameters(params) if engine.zero_optimization_stage() == 3
              else contextlib.nullcontext())  # fmt: skip
    with gather:
        return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}


def _worker(rank: int, world: int, out: str) -> None:
    for stage in (2, 3):  # one process group for both: each spawn costs DeepSpeed's import
        _averaged(rank, world, stage, f"{out}/zero{stage}")


def _averaged(rank: int, world: int, stage: int, out: str) -> None:
    engine = _engine(world, stage)
    ema = Ema(engine.engine, DECAY)
    reference = _full_params(engine.engine)  # the old EMA: a whole fp32 copy, lerped in place
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x = torch.randn(world * MICRO, 3, RES, RES, generator=g)[rank * MICRO : (rank + 1) * MICRO]
        y = torch.randint(0, CLASSES, (world * MICRO,), generator=g)[
            rank * MICRO : (rank + 1) * MICRO
        ]
        engine.micro_step(F.cross_entropy(engine.engine(x), y))
        ema.update(engine.engine, step)
        live = _full_params(engine.engine)
        for n, t in reference.items():
            t.lerp_(live[n], 1.0 - ema.rate(step))
    total = sum(t.numel() for t in reference.values())
    assert ema.flat.numel() <= total // world + len(reference)  # a slice per rank, not a copy
    averaged = ema.gathered()
    on_zero = ema.gathered(dst=0)
    assert (on_zero is None) == (rank != 0)
    if rank == 0:
        assert all(torch.equal(on_zero[n], averaged[n]) for n in averaged)
        Path(out).mkdir()
        save_file(averaged, f"{out}/ema.safetensors")
        save_file(reference, f"{out}/reference.safetensors")
        save_file(live, f"{out}/live.safetensors")


def _resumed(rank: int, world: int, out: str) -> None:
    """A fresh EMA on another world size, loaded from the whole copy: each rank takes its slice."""
    engine = _engine(world, 3)
    ema = Ema(engine.engine, DECAY)
    saved = load_file(f"{out}/ema.safetensors")
    ema.load(saved)
    again = ema.gathered()
    assert all(torch.equal(again[n], saved[n]) for n in saved)
    if rank == 0:
        save_file(again, f"{out}/resumed.safetensors")


def test_the_partitioned_ema_equals_a_single_process_reference(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        ema, reference = (
            load_file(f"{out}/ema.safetensors"),
            load_file(f"{out}/reference.safetensors"),
        )
        live = load_file(f"{out}/live.safetensors")
        assert ema.keys() == reference.keys()
        worst = max(float((ema[n] - reference[n]).abs().max() / reference[n].abs().max().clamp_min(1e-12))
                    for n in ema)  # fmt: skip
        assert worst <= 1e-6, (
            f"ZeRO-{stage}: EMA differs from the reference by {worst:.2e} relative"
        )
        moved = max(float((ema[n] - live[n]).abs().max()) for n in ema)
        assert moved > 1e-4  # an average, not a copy of the last weights
    spawn(_resumed, 1, str(tmp_path / "zero3"))  # elastic: 2 ranks' ZeRO-3 slices -> 1 rank
    resumed = load_file(f"{tmp_path}/zero3/resumed.safetensors")
    assert all(torch.equal(resumed[n], ema[n]) for n in ema)
