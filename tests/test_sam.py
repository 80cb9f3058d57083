"""SAM (SPEC §5): one step against a hand computation, and 2 DeepSpeed workers whose ascent uses
each worker's own gradient while the descent gradient is averaged and AGC'd."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import create_model
from pipeline.optim.agc import adaptive_grad_clip_
from pipeline.optim.param_groups import agc_parameters, weight_decay_groups
from pipeline.optim.sam import ascent_count, ascent_step, perturbed
from pipeline.testing.spawn import spawn
from pipeline.train.config import PretrainConfig, SamSection, TrainSection
from pipeline.train.worker.engine import build_engine, deepspeed_config
from pipeline.train.worker.export import full_state_dict
from tests.builders import HYPER, OPTIMIZER


def test_one_sam_step_equals_the_hand_computation():
    w0 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    x, t = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 1.0])
    rho, lr = 0.05, 0.1
    # By hand: L = 0.5 ||W x - t||^2, dL/dW = (W x - t) x^T.
    g = torch.outer(w0 @ x - t, x)
    e = rho * g / g.norm()
    g_descent = torch.outer((w0 + e) @ x - t, x)
    expected = w0 - lr * g_descent

    layer = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w0)
    opt = torch.optim.SGD(layer.parameters(), lr=lr)

    def loss():
        return 0.5 * (layer(x) - t).pow(2).sum()

    with perturbed([layer.weight], loss, rho) as at_w:
        assert torch.allclose(layer.weight, w0 + e)  # inside: the ascent point
        loss().backward()
    assert torch.equal(layer.weight.detach(), w0)  # restored bit for bit before the step
    assert at_w.item() == pytest.approx(0.5 * (w0 @ x - t).pow(2).sum().item())
    opt.step()
    assert torch.allclose(layer.weight.detach(), expected, atol=1e-7)
    assert not torch.allclose(expected, w0 - lr * g, atol=1e-4)  # SAM differs from plain SGD


def test_ascent_uses_one_global_norm_and_a_share_of_the_batch():
    grads = [torch.tensor([3.0]), torch.tensor([0.0, 4.0])]
    steps = ascent_step(grads, rho=1.0)
    assert torch.allclose(torch.cat(steps), torch.tensor([0.6, 0.0, 0.8]))
    assert [ascent_count(10, f) for f in (1.0, 0.2, 0.01)] == [10, 2, 1]


def test_sam_with_zero3_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"sam\.rho > 0 needs cluster\.zero_stage 0, 1 or 2"):
        PretrainConfig.model_validate(
            {"train": {"sam": {"rho": 0.05}, "global_batch": 8}, "cluster": {"zero_stage": 3}}
        )


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


@pytest.mark.e2e
def test_two_workers_ascend_on_their_own_gradients(tmp_path):
    out = str(tmp_path / "weights.pt")
    spawn(_worker, WORLD, 2, out)
    result = torch.load(out, weights_only=True)
    own, shared = _reference(shared_ascent=False), _reference(shared_ascent=True)
    assert _max_relative_error(result, own) <= 1e-5
    # The test can tell the variants apart: averaging the ascent moves the weights far more.
    assert _max_relative_error(shared, own) > 1e-3
