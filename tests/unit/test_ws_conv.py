"""Scaled WS conv and the fast NFNet versus the naive reference implementation."""

import pytest
import torch

from benchmarks.naive_nfnet import NaiveNFNet
from pipeline.models import create_model
from pipeline.models.layers import ScaledStdConv2d, clear_weight_caches


def test_standardized_weight_formula():
    conv = ScaledStdConv2d(6, 4, 3, groups=2, input_scale=1.7)
    with torch.no_grad():
        conv.weight.normal_(0.3, 2.0)
        conv.gain.uniform_(0.5, 1.5)
    w = conv.weight
    n = w[0].numel()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    want = conv.gain.view(-1, 1, 1, 1) * 1.7 * (w - mean) / torch.sqrt(n * var + 1e-4)
    got = conv.standardized_weight()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Unit-norm rows (times gain * input_scale): the property signal propagation relies on.
    rows = (got / (conv.gain.view(-1, 1, 1, 1) * 1.7)).reshape(4, -1)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(4), rtol=1e-4, atol=1e-4)


def test_eval_cache_is_used_and_invalidated():
    conv = ScaledStdConv2d(3, 5, 3).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y1 = conv(x)
        cached = conv._eval_cache[1]
        y2 = conv(x)
        assert conv._eval_cache[1] is cached and torch.equal(y1, y2)
        conv.weight.add_(1.0)  # an optimiser step or a load bumps the version counter
        y3 = conv(x)
    assert conv._eval_cache[1] is not cached and not torch.equal(y1, y3)
    torch.testing.assert_close(
        y3, torch.nn.functional.conv2d(x, conv.standardized_weight(), conv.bias, padding=1)
    )
    conv.load_state_dict({k: v * 2 for k, v in conv.state_dict().items()})
    with torch.no_grad():
        y4 = conv(x)
    torch.testing.assert_close(
        y4, torch.nn.functional.conv2d(x, conv.standardized_weight(), conv.bias, padding=1)
    )
    conv.train()
    assert conv._eval_cache is None
    # With autograd on, eval mode still builds the weight in the graph (gradients flow).
    conv.eval()
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def test_eval_cache_after_writes_through_data():
    """Writes through .data (EMA swaps, DeepSpeed) are invisible to version counters: the
    documented refresh points (clear_weight_caches, eval() again) must pick them up."""
    model = create_model("nfnet_nano0", num_classes=3, skipinit_init=1.0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():  # standardisation is scale-invariant: shift, do not scale
            if isinstance(m, ScaledStdConv2d):
                m.weight.data.add_(torch.randn_like(m.weight))
        assert torch.equal(model(x), before)  # the contract's premise: this write is not seen
        clear_weight_caches(model)
        fresh = model(x)
        model.eval()
        assert torch.equal(model(x), fresh)
    uncached = model(x)  # autograd on: weights are standardised in the graph, no cache
    assert not torch.equal(before, fresh)
    torch.testing.assert_close(fresh, uncached.detach())


@pytest.mark.parametrize("name", ["nfnet_nano1", "nfnet_f0"])
def test_fast_model_equals_naive_reference(name):
    """Gamma/beta folding, the fused standardisation and the fused SE/skip/alpha multiplier
    compute the same function and gradients as the literal implementation."""
    res = 64 if "nano" in name else 32
    fast = create_model(name, num_classes=10, skipinit_init=0.5, stochdepth_rate=0.0, drop_rate=0.0)
    naive = NaiveNFNet(fast)
    x = torch.randn(2, 3, res, res)
    for train in (True, False):
        fast.train(train)
        naive.train(train)
        out_fast, out_naive = fast(x), naive(x)
        torch.testing.assert_close(out_fast, out_naive, rtol=1e-4, atol=1e-6)
    out_fast.square().sum().backward()
    out_naive.square().sum().backward()
    naive_params = dict(naive.named_parameters())
    for n, p in fast.named_parameters():
        q = naive_params[n].grad
        torch.testing.assert_close(p.grad, q, rtol=1e-3, atol=1e-5 * q.abs().max().item() + 1e-9)


def test_stochastic_depth_matches_naive_with_same_rng():
    fast = create_model("nfnet_nano0", num_classes=10, skipinit_init=1.0, drop_rate=0.0)
    naive = NaiveNFNet(fast)
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(3)
    a = fast(x)
    torch.manual_seed(3)
    b = naive(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
