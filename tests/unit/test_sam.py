"""SAM (SPEC §5): one step against a hand computation, and 2 DeepSpeed workers whose ascent uses
each worker's own gradient while the descent gradient is averaged and AGC'd."""

import pytest
import torch

from pipeline.optim.sam import ascent_count, ascent_step, perturbed
from pipeline.train.config import PretrainConfig


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
