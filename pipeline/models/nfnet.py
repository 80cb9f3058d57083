"""NFNet (Brock et al. 2021), exactly per SPEC §2, and its variant table.

Reading guide: ``NFNetCfg`` holds every architectural number; ``VARIANTS`` maps names to configs;
``NFBlock`` is the pre-activation bottleneck; ``NFNet`` wires stem -> stages -> head and keeps the
expected-variance bookkeeping (beta = 1 / expected_std, growth by alpha^2, reset after each
transition block).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.base import ImageClassifier
from pipeline.models.layers import (
    ACTIVATION_GAMMA,
    ScaledStdConv2d,
    SqueezeExcite,
    activation_fn,
    stochastic_depth_mask,
)
from pipeline.models.registry import register_variants


@dataclass(frozen=True)
class NFNetCfg:
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem_chs: tuple[int, int, int] = (16, 32, 64)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    group_size: int = 128
    bottle_ratio: float = 0.5
    se_ratio: float = 0.5
    final_conv_mult: int = 2
    alpha: float = 0.2
    activation: str = "gelu"
    drop_rate: float = 0.2
    stochdepth_rate: float = 0.25
    stochdepth_scale_by_keep: bool = False
    skipinit_init: float = 0.0
    train_res: int = 192
    test_res: int = 256
    # "same": TensorFlow SAME padding, as DeepMind's published weights were trained (strided
    # convs pad after only); "symmetric": kernel // 2 on both sides. Same parameters either way.
    padding: str = "symmetric"
    ws_eps: float = 1e-4  # weight standardisation: rsqrt(N * var + ws_eps), DeepMind's scale
    ws_eps_per_variance: bool = False  # rsqrt(var + ws_eps) / sqrt(N): timm's convention

    def conv(self, *args, **kwargs) -> ScaledStdConv2d:
        """A weight-standardised conv with this config's padding and epsilon."""
        padding = "same" if self.padding == "same" else None
        return ScaledStdConv2d(*args, padding=padding, eps=self.ws_eps,
                               eps_per_variance=self.ws_eps_per_variance, **kwargs)  # fmt: skip

    def validate(self) -> None:
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"padding={self.padding!r}; expected 'symmetric' or 'same'")
        if not (len(self.depths) == len(self.widths) == len(self.strides)):
            raise ValueError(
                f"depths, widths and strides must have one entry per stage; got "
                f"{len(self.depths)}, {len(self.widths)}, {len(self.strides)}"
            )
        if not 0.0 <= self.drop_rate < 1.0 or not 0.0 <= self.stochdepth_rate < 1.0:
            raise ValueError("drop_rate and stochdepth_rate must be in [0, 1)")
        activation_fn(self.activation)


def bottleneck_width(out_ch: int, ratio: float, group_size: int) -> int:
    """mid = int(out_ch * ratio) rounded down to whole groups (at least one)."""
    return max(1, int(out_ch * ratio) // group_size) * group_size


class NFBlock(nn.Module):
    """Pre-activation NF bottleneck with the extra grouped 3x3 conv (SPEC §2).

    out = act(x) * beta -> 1x1 -> act -> 3x3 g (stride) -> act -> 3x3 g -> act -> 1x1 -> SE
          -> stochastic depth -> * skip_gain ;  y = out * alpha + shortcut
    Gamma and beta are folded into the following convs; SE gate, 2x, stochastic-depth mask,
    skip gain and alpha collapse into one [B, C, 1, 1] multiplier applied by a single addcmul.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        stride: int,
        beta: float,
        alpha: float,
        cfg: NFNetCfg,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        gamma = ACTIVATION_GAMMA[cfg.activation]
        mid = bottleneck_width(out_ch, cfg.bottle_ratio, cfg.group_size)
        groups = mid // cfg.group_size
        self.act = activation_fn(cfg.activation)
        self.beta, self.alpha, self.stride = beta, alpha, stride
        self.drop_path_rate = drop_path_rate
        self.scale_by_keep = cfg.stochdepth_scale_by_keep

        if stride > 1 or in_ch != out_ch:
            self.downsample = (
                nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            self.shortcut = cfg.conv(in_ch, out_ch, 1, input_scale=gamma * beta)
        else:
            self.downsample, self.shortcut = None, None
        self.conv1 = cfg.conv(in_ch, mid, 1, input_scale=gamma * beta)
        self.conv2 = cfg.conv(mid, mid, 3, stride=stride, groups=groups, input_scale=gamma)
        self.conv2b = cfg.conv(mid, mid, 3, groups=groups, input_scale=gamma)
        self.conv3 = cfg.conv(mid, out_ch, 1, input_scale=gamma)
        self.se = SqueezeExcite(out_ch, max(1, int(out_ch * cfg.se_ratio)))
        # shape (1,), not (): DeepSpeed broadcasts parameters as bytes, which a 0-d tensor cannot be
        self.skip_gain = nn.Parameter(torch.full((1,), float(cfg.skipinit_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(x)  # gamma * beta are folded into conv1 / shortcut
        shortcut = x if self.shortcut is None else self.shortcut(self.downsample(pre))
        out = self.conv1(pre)
        out = self.conv2(self.act(out))
        out = self.conv2b(self.act(out))
        out = self.conv3(self.act(out))
        multiplier = self.se(out) * (2.0 * self.alpha * self.skip_gain)
        if self.training and self.drop_path_rate > 0:
            mask = stochastic_depth_mask(x.shape[0], self.drop_path_rate, out, self.scale_by_keep)
            multiplier = multiplier * mask
        return torch.addcmul(shortcut, out, multiplier)


class NFNet(ImageClassifier):
    def __init__(self, cfg: NFNetCfg, num_classes: int = 1000, in_chans: int = 3) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = num_classes
        self.act = activation_fn(cfg.activation)
        gamma = ACTIVATION_GAMMA[cfg.activation]

        # Stem: 3x3 s2, 3x3, 3x3, 3x3 s2; gamma-activation between convs, none after the last.
        c0, c1, c2 = cfg.stem_chs
        stem_out = cfg.widths[0] // 2
        self.stem = nn.ModuleList(
            [
                cfg.conv(in_chans, c0, 3, stride=2),
                cfg.conv(c0, c1, 3, input_scale=gamma),
                cfg.conv(c1, c2, 3, input_scale=gamma),
                cfg.conv(c2, stem_out, 3, stride=2, input_scale=gamma),
            ]
        )

        blocks: list[NFBlock] = []
        expected_std = 1.0
        num_blocks, ch, index = sum(cfg.depths), stem_out, 0
        for depth, width, stride in zip(cfg.depths, cfg.widths, cfg.strides, strict=True):
            for block_idx in range(depth):
                blocks.append(
                    NFBlock(
                        ch,
                        width,
                        stride=stride if block_idx == 0 else 1,
                        beta=1.0 / expected_std,
                        alpha=cfg.alpha,
                        cfg=cfg,
                        drop_path_rate=cfg.stochdepth_rate * index / num_blocks,
                    )
                )
                ch, index = width, index + 1
                if block_idx == 0:  # transition block: the shortcut re-normalises the stream
                    expected_std = 1.0
                expected_std = math.sqrt(expected_std**2 + cfg.alpha**2)
        self.blocks = nn.Sequential(*blocks)

        self.num_features = cfg.final_conv_mult * cfg.widths[-1]
        self.final_conv = cfg.conv(ch, self.num_features, 1)
        self.final_gamma = gamma  # the map is 1/32 of the input side: a plain multiply is cheap
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.init_classifier()

    def init_classifier(self) -> None:
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def expected_variances(self) -> list[float]:
        """Expected residual-stream variance at each block's input (1 / beta^2)."""
        return [1.0 / b.beta**2 for b in self.blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem[0](x)
        for conv in self.stem[1:]:
            x = conv(self.act(x))
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Each block's inputs are kept, its insides recomputed in backward (same RNG
            # draws, same result). Under ZeRO-3 this also frees every block's gathered
            # weights after its forward: autograd would otherwise keep them all until backward.
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.act(self.final_conv(x)) * self.final_gamma


# ---- variant table (SPEC §2) -------------------------------------------------------------------

_F_DEPTHS = {k: (k + 1, 2 * (k + 1), 6 * (k + 1), 3 * (k + 1)) for k in range(8)}
_F_RES = {0: (192, 256), 1: (224, 320), 2: (256, 352), 3: (320, 416), 4: (384, 512),
          5: (416, 544), 6: (448, 576), 7: (480, 608)}  # fmt: skip
_F_DROP = {0: 0.2, 1: 0.3, 2: 0.4, 3: 0.4, 4: 0.5, 5: 0.5, 6: 0.5, 7: 0.5}
F_WIDTHS = (256, 512, 1536, 1536)
F_PLUS_WIDTHS = (384, 768, 2048, 2048)

# Nano family for CPU work: 1/8 of the F widths and group width, depths doubling F0->F1->F3->F7,
# so a sweep over nano0..nano7 has a real model-size axis built by the same code.
NANO_WIDTHS = (32, 64, 192, 192)
NANO_STEM = (8, 16, 16)
NANO_GROUP = 16


def _f_cfg(k: int, widths: tuple[int, ...] = F_WIDTHS) -> NFNetCfg:
    train_res, test_res = _F_RES[k]
    return NFNetCfg(
        depths=_F_DEPTHS[k],
        widths=widths,
        drop_rate=_F_DROP[k],
        train_res=train_res,
        test_res=test_res,
    )


VARIANTS: dict[str, NFNetCfg] = {f"nfnet_f{k}": _f_cfg(k) for k in range(8)}
VARIANTS["nfnet_f3plus"] = _f_cfg(3, F_PLUS_WIDTHS)
VARIANTS["nfnet_f7plus"] = _f_cfg(7, F_PLUS_WIDTHS)
for _k in (0, 1, 3, 7):
    VARIANTS[f"nfnet_nano{_k}"] = dataclasses.replace(
        _f_cfg(_k),
        widths=NANO_WIDTHS,
        stem_chs=NANO_STEM,
        group_size=NANO_GROUP,
        train_res=64,
        test_res=80,
    )


register_variants(VARIANTS, lambda cfg, num_classes: NFNet(cfg, num_classes), "nfnet")
