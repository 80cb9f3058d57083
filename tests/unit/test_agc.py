"""AGC (SPEC §3) against a straightforward per-tensor reference, both execution paths."""

import pytest
import torch

from pipeline.models import create_model
from pipeline.optim.agc import (
    UnitLayout,
    adaptive_grad_clip_,
    clip_factors,
    unitwise_sq_norms,
)
from pipeline.optim.param_groups import agc_parameter_names, agc_parameters, weight_decay_groups
from tests.builders import agc_zoo, reference_agc


@pytest.mark.parametrize("clipping", [0.001, 0.01, 0.05, 0.16, 1.0])
@pytest.mark.parametrize("foreach", [False, True])
def test_agc_matches_reference(clipping, foreach):
    params, grads = agc_zoo()
    expected = [reference_agc(p, g, clipping) for p, g in zip(params, grads, strict=True)]
    tensors = []
    for p, g in zip(params, grads, strict=True):
        t = torch.nn.Parameter(p.clone())
        t.grad = g.clone()
        tensors.append(t)
    clipped = adaptive_grad_clip_(tensors, clipping=clipping, foreach=foreach)
    n_changed = 0
    for t, e, g in zip(tensors, expected, grads, strict=True):
        torch.testing.assert_close(t.grad, e, rtol=1e-5, atol=1e-7)
        assert torch.isfinite(t.grad).all()
        if t.ndim <= 1:
            n_changed += int(not torch.equal(e, g))
        else:
            n_changed += int((e != g).reshape(e.shape[0], -1).any(1).sum())
    assert int(clipped) == n_changed
    if clipping <= 0.05:
        assert n_changed > 0  # the test data really clips something


def test_unit_layout_and_norms():
    params, _ = agc_zoo()
    layout = UnitLayout.of(params)
    assert layout.units == (16, 32, 10, 1, 1, 1, 5, 12) and layout.total == 78
    sq = unitwise_sq_norms(params, foreach=False)
    assert torch.allclose(sq, unitwise_sq_norms(params, foreach=True))
    assert sq[:16] == pytest.approx(params[0].reshape(16, -1).pow(2).sum(1))
    assert sq[58].item() == pytest.approx(params[3].pow(2).sum().item(), rel=1e-5)


def test_supplied_norms_are_used_and_additive_over_fragments():
    """The distributed design: partial squared norms of fragments add up to the full norm."""
    params, grads = agc_zoo()
    full = unitwise_sq_norms(grads)
    # Split every >=2-D tensor's rows into two column fragments; squares add per unit.
    frag_a = [g.reshape(g.shape[0], -1)[:, ::2] if g.ndim >= 2 else g for g in grads]
    frag_b = [
        g.reshape(g.shape[0], -1)[:, 1::2] if g.ndim >= 2 else torch.zeros_like(g) for g in grads
    ]
    summed = unitwise_sq_norms(frag_a) + unitwise_sq_norms(frag_b)
    torch.testing.assert_close(summed, full)

    tensors = []
    for p, g in zip(params, grads, strict=True):
        t = torch.nn.Parameter(p.clone())
        t.grad = g.clone()
        tensors.append(t)
    # Supplying a huge gradient norm for every unit must clip every unit by that factor.
    big = torch.full_like(full, 1e12)
    adaptive_grad_clip_(tensors, clipping=0.01, grad_sq_norms=big)
    factors = clip_factors(unitwise_sq_norms(params), big, 0.01, 1e-3)
    assert (factors < 1).all()
    torch.testing.assert_close(tensors[2].grad[1], grads[2][1] * factors[48 + 1])
    with pytest.raises(ValueError, match="one per unit"):
        adaptive_grad_clip_(tensors, grad_sq_norms=big[:-1])


def test_param_groups_exclude_classifier_weight_and_no_decay_tensors():
    m = create_model("nfnet_nano0", num_classes=10)
    names = agc_parameter_names(m)
    assert "fc.weight" not in names and "fc.bias" in names
    assert len(agc_parameters(m)) == len(list(m.parameters())) - 1
    decay, no_decay = weight_decay_groups(m, 2e-5)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    named = dict(m.named_parameters())
    for n in ["blocks.0.skip_gain", "blocks.0.conv1.gain", "blocks.0.conv1.bias", "fc.bias"]:
        assert id(named[n]) in no_decay_ids, n
    for n in ["blocks.0.conv1.weight", "fc.weight", "blocks.0.se.fc1.weight"]:
        assert id(named[n]) not in no_decay_ids, n
    assert decay["weight_decay"] == 2e-5 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_agc_on_a_real_model_step_leaves_classifier_untouched():
    m = create_model("nfnet_nano0", num_classes=10, skipinit_init=1.0)
    loss = m(torch.randn(4, 3, 32, 32)).logsumexp(1).sum() * 1e3  # huge gradients
    loss.backward()
    fc_grad = m.fc.weight.grad.clone()
    n = adaptive_grad_clip_(agc_parameters(m), clipping=0.01)
    assert int(n) > 0
    assert torch.equal(m.fc.weight.grad, fc_grad)
    with pytest.raises(ValueError, match="clipping must be > 0"):
        adaptive_grad_clip_(agc_parameters(m), clipping=0.0)
