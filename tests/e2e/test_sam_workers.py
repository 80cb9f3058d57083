"""SAM under DeepSpeed with two gloo workers: each ascends on its own gradient, the descent
gradient is averaged and AGC'd, against a single-process reference (SPEC §5)."""

import torch
import torch.nn.functional as F

from pipeline.models import create_model
from pipeline.optim.agc import adaptive_grad_clip_
from pipeline.optim.param_groups import agc_parameters, weight_decay_groups
from pipeline.optim.sam import ascent_count, ascent_step
from pipeline.testing.spawn import spawn
from pipeline.train.components import SamSection
from pipeline.train.config import TrainSection
from pipeline.train.worker.engine import build_engine, deepspeed_config
from pipeline.train.worker.export import full_state_dict
from tests.builders import HYPER, OPTIMIZER

STEPS, MICRO, ACCUM, CLASSES, RES, WORLD = 2, 4, 2, 5, 32, 2
TRAIN = TrainSection(sam=SamSection(rho=0.5, ascent_fraction=0.5), label_smoothing=0.1,
                     global_batch=16)  # fmt: skip


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("nfnet_nano0", num_classes=CLASSES, drop_rate=0.0, stochdepth_rate=0.0)


def _micro_batches():
    """[step][rank][micro] -> (images, labels)."""
    g = torch.Generator().manual_seed(3)
    return [[[(torch.randn(MICRO, 3, RES, RES, generator=g) * 2,
               torch.randint(0, CLASSES, (MICRO,), generator=g)) for _ in range(ACCUM)]
             for _ in range(WORLD)] for _ in range(STEPS)]  # fmt: skip


def _ce(model, x, y):
    return F.cross_entropy(model(x), y, label_smoothing=TRAIN.label_smoothing)


def _reference(shared_ascent: bool) -> dict[str, torch.Tensor]:
    """Single process: each (rank, micro) perturbs with its own ascent gradient (or, with
    shared_ascent, with the average over ranks: the variant SAM must NOT be), the descent
    gradients are averaged, AGC'd, and SGD steps."""
    model = _model().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(weight_decay_groups(model, HYPER["weight_decay"]), lr=HYPER["lr"],
                          momentum=HYPER["momentum"], nesterov=True)  # fmt: skip
    k = ascent_count(MICRO, TRAIN.sam.ascent_fraction)
    for step in _micro_batches():
        opt.zero_grad()
        for m in range(ACCUM):
            ascents = [torch.autograd.grad(_ce(model, x[:k], y[:k]), params)
                       for x, y in (step[r][m] for r in range(WORLD))]  # fmt: skip
            if shared_ascent:
                ascents = [[sum(gs) / WORLD for gs in zip(*ascents, strict=True)]] * WORLD
            for r in range(WORLD):
                saved = [p.detach().clone() for p in params]
                with torch.no_grad():
                    torch._foreach_add_(params, ascent_step(list(ascents[r]), TRAIN.sam.rho))
                (_ce(model, *step[r][m]) / (WORLD * ACCUM)).backward()
                with torch.no_grad():
                    torch._foreach_copy_(params, saved)
        adaptive_grad_clip_(agc_parameters(model), HYPER["clipping"], HYPER["eps"])
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _worker(rank: int, world: int, stage: int, out: str) -> None:
    from pipeline.train.worker.step import micro_step

    engine = build_engine(_model().train(),
                          deepspeed_config(MICRO, ACCUM, world, stage, "fp32", use_gpu=False), HYPER["lr"], OPTIMIZER)  # fmt: skip
    for step in _micro_batches():
        for m in range(ACCUM):
            micro_step(engine, *step[rank][m], TRAIN)
    weights = full_state_dict(engine.engine)
    if rank == 0:
        torch.save(weights, out)


def _max_relative_error(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-12)).item() for n in b)


def test_two_workers_ascend_on_their_own_gradients(tmp_path):
    out = str(tmp_path / "weights.pt")
    spawn(_worker, WORLD, 2, out)
    result = torch.load(out, weights_only=True)
    own, shared = _reference(shared_ascent=False), _reference(shared_ascent=True)
    # Floating-point order only: 2.8e-6 on one Xeon; CPUs with other kernels round differently
    # (test_engine_agc saw 3.8e-6 here and 1.03e-5 on CI), so the bound leaves 10x below the
    # variant check that follows.
    assert _max_relative_error(result, own) <= 1e-4
    # The test can tell the variants apart: averaging the ascent moves the weights far more.
    assert _max_relative_error(shared, own) > 1e-3
