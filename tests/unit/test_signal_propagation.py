"""Signal propagation at init (NF-ResNet paper; SPEC §2).

Each block is fed unit-Gaussian noise scaled to the variance the bookkeeping expects at its input
(1 / beta^2). Then: the residual branch (before alpha) has unit variance, the transition shortcut
has unit variance, and the block's output variance is what the bookkeeping expects next
(input + alpha^2, or 1 + alpha^2 after a transition).

Why per block and why 2x2-constant noise for strided blocks: the transition shortcut average-pools
2x2 windows, which divides the variance of spatially *white* noise by 4, while the bookkeeping
(like natural images) assumes neighbouring pixels are correlated. Repeating each noise value over
a 2x2 patch makes the pool variance-preserving without touching the model.

Resolution 128 px: at 32 px the last stage is 1x1 and its 3x3 convs mostly see zero padding
(branch variance ~0.55 measured); at 128 px it is 4x4 and the border still costs a few percent.

Tolerances, from the spread over weight draws (seeds 0-7 on nano1, 0-2 on F0, 128 px): a single
block's branch variance deviated from 1 by up to 16% (nano widths have fan-ins as small as 16, so
one block's variance depends on its draw); the mean over all blocks stayed in 0.94-0.96; the stream
and the shortcut stayed within 2.5% of the bookkeeping. We allow 25% per block, 10% on the mean,
and 4% on stream and shortcut. A missing gamma (variance ~0.3-0.5), a wrong alpha (the per-block
increment is alpha^2 ~ 3.5% of the stream, compounding over a stage) or a transition that does
not reset fails by far. That beta is applied is pinned exactly elsewhere: the bookkeeping test
checks its values and test_ws_conv shows the fast model equals the literal implementation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import create_model


def _block_variances(name: str, res: int, batch: int):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, skipinit_init=1.0).eval()
    expected_in = m.expected_variances()
    alpha2 = m.cfg.alpha**2
    channels = [m.stem[-1].out_channels] + [b.conv3.out_channels for b in m.blocks]
    side, rows = res, []
    with torch.no_grad():
        for i, block in enumerate(m.blocks):
            if block.stride > 1:
                x = F.interpolate(
                    torch.randn(batch, channels[i], side // 2, side // 2), scale_factor=2
                )
            else:
                x = torch.randn(batch, channels[i], side, side)
            x = x * math.sqrt(expected_in[i])
            y = block(x)
            if block.shortcut is None:
                shortcut, want_out = x, expected_in[i] + alpha2
            else:
                shortcut = block.shortcut(block.downsample(block.act(x)))
                want_out = 1.0 + alpha2
            branch = (y - shortcut) / block.alpha
            rows.append((i, branch.var().item(), shortcut.var().item(), y.var().item(), want_out))
            side //= block.stride
    return rows


@pytest.mark.parametrize("name,batch", [("nfnet_f0", 4), ("nfnet_nano1", 8)])
def test_residual_stream_follows_expected_variance(name, batch):
    rows = _block_variances(name, res=128, batch=batch)
    alpha2 = 0.2**2
    for i, branch_var, shortcut_var, out_var, want_out in rows:
        assert branch_var == pytest.approx(1.0, rel=0.25), f"block {i}: branch {branch_var:.3f}"
        assert out_var == pytest.approx(want_out, rel=0.04), (
            f"block {i}: {out_var:.3f}/{want_out:.3f}"
        )
        assert shortcut_var == pytest.approx(want_out - alpha2, rel=0.04), f"block {i}: shortcut"
    mean_branch = sum(r[1] for r in rows) / len(rows)
    assert mean_branch == pytest.approx(1.0, rel=0.10), f"mean branch variance {mean_branch:.3f}"
    # The stream really grows within a stage and resets at transitions (not a flat line).
    outs = [r[3] for r in rows]
    assert max(outs) > 1.15 and min(outs) < 1.06


def test_skipinit_makes_blocks_identity_at_default_init():
    m = create_model("nfnet_nano0", num_classes=10).eval()
    x = torch.randn(2, m.blocks[2].conv1.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.equal(m.blocks[2](x), x)
