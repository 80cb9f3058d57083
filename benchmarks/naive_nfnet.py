"""A deliberately straightforward NFNet: the yardstick for our fast implementation.

Same parameters and names as ``pipeline.models.nfnet.NFNet`` (so state dicts load both ways), but
written the obvious way: weights standardised with separate mean/var/sub/div ops every step, every
gamma, beta, SE, skip-gain and alpha applied as its own multiply over the activation tensor.
Tests use it to prove the fast model computes the same function; benchmarks time both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.layers import ACTIVATION_GAMMA, activation_fn
from pipeline.models.nfnet import NFNet, NFNetCfg


class NaiveWSConv2d(nn.Conv2d):
    def __init__(self, in_ch, out_ch, k, stride=1, groups=1, eps=1e-4):
        super().__init__(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=True)
        self.gain = nn.Parameter(torch.ones(out_ch))
        self.eps = eps

    def forward(self, x):
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w_hat = (w - mean) / torch.sqrt(fan_in * var + self.eps)
        w_hat = w_hat * self.gain.view(-1, 1, 1, 1)
        return F.conv2d(x, w_hat, self.bias, self.stride, self.padding, groups=self.groups)


class NaiveSE(nn.Module):
    def __init__(self, ch, hidden):
        super().__init__()
        self.fc1 = nn.Linear(ch, hidden)
        self.fc2 = nn.Linear(hidden, ch)

    def forward(self, x):
        h = torch.relu(self.fc1(x.mean(dim=(2, 3))))
        return torch.sigmoid(self.fc2(h))[:, :, None, None]


class NaiveBlock(nn.Module):
    def __init__(self, ref_block, cfg: NFNetCfg):
        super().__init__()
        r = ref_block
        self.beta, self.alpha, self.stride = r.beta, r.alpha, r.stride
        self.drop_path_rate = r.drop_path_rate
        g = cfg.activation
        self.gamma, self.act = ACTIVATION_GAMMA[g], activation_fn(g)

        def clone(c):
            return NaiveWSConv2d(
                c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.groups
            )

        self.shortcut = clone(r.shortcut) if r.shortcut is not None else None
        self.conv1, self.conv2 = clone(r.conv1), clone(r.conv2)
        self.conv2b, self.conv3 = clone(r.conv2b), clone(r.conv3)
        self.se = NaiveSE(r.se.fc1.in_features, r.se.fc1.out_features)
        self.skip_gain = nn.Parameter(r.skip_gain.detach().clone())

    def gact(self, x):
        return self.act(x) * self.gamma

    def forward(self, x):
        out = self.gact(x) * self.beta
        if self.shortcut is None:
            shortcut = x
        else:
            pooled = (
                F.avg_pool2d(out, 2, 2, ceil_mode=True, count_include_pad=False)
                if self.stride > 1
                else out
            )
            shortcut = self.shortcut(pooled)
        out = self.conv1(out)
        out = self.conv2(self.gact(out))
        out = self.conv2b(self.gact(out))
        out = self.conv3(self.gact(out))
        out = 2 * self.se(out) * out
        if self.training and self.drop_path_rate > 0:
            keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype).bernoulli_(
                1 - self.drop_path_rate
            )
            out = out * keep
        out = out * self.skip_gain
        return out * self.alpha + shortcut


class NaiveNFNet(nn.Module):
    """Built from a fast ``NFNet`` so both share the exact architecture; copy weights with
    ``naive.load_state_dict(fast.state_dict())``."""

    def __init__(self, ref: NFNet):
        super().__init__()
        cfg = ref.cfg
        self.gamma, self.act = ACTIVATION_GAMMA[cfg.activation], activation_fn(cfg.activation)

        def clone(c):
            return NaiveWSConv2d(
                c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.groups
            )

        self.stem = nn.ModuleList([clone(c) for c in ref.stem])
        self.blocks = nn.Sequential(*[NaiveBlock(b, cfg) for b in ref.blocks])
        self.final_conv = clone(ref.final_conv)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(ref.fc.in_features, ref.fc.out_features)
        self.load_state_dict(ref.state_dict())

    def forward(self, x):
        x = self.stem[0](x)
        for conv in self.stem[1:]:
            x = conv(self.act(x) * self.gamma)
        x = self.blocks(x)
        x = self.act(self.final_conv(x)) * self.gamma
        return self.fc(self.head_drop(x.mean(dim=(2, 3))))
