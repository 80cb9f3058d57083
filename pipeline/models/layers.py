"""Normalizer-free building blocks: Scaled Weight Standardisation conv, gamma-scaled activations,
squeeze-excite. SPEC §2.

Speed notes. The gamma of a gamma-scaled activation (and the block's beta) is a constant that
multiplies the *input* of the next convolution; since conv(c * x, W) == conv(x, c * W), we fold it
into the per-output-channel scale of the standardised weight (``input_scale``) instead of a full
pass over the activation tensor. The standardisation itself runs through the fused batch-norm
kernel (one kernel forward, one backward, as timm does) and is cached in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Gamma such that gamma * act(x) has unit variance for x ~ N(0, 1) (NF-ResNet paper, SPEC §2).
ACTIVATION_GAMMA: dict[str, float] = {
    "gelu": 1.7015043497085571,
    "relu": 1.7139588594436646,
    "silu": 1.7881293296813965,
}

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def activation_fn(name: str):
    """The *unscaled* activation; its gamma is folded into the next WS conv."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one side (DeepMind's reference): the output is
    ceil(size / stride), and an odd total pads the extra pixel after, not before."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with Scaled Weight Standardisation.

    W_hat = gain * input_scale * (W - mean) / sqrt(N * var + eps), per output channel over the
    fan-in N. ``input_scale`` is a Python constant: the gamma (and beta) of whatever scaled the
    input, folded here so the activation tensor is never multiplied separately.
    ``eps`` = 1e-4 softly floors N * var the way DeepMind's reference hard-floors it;
    ``eps_per_variance`` adds it to var instead (timm's convention: sqrt(var + eps)).

    ``padding="same"`` is TensorFlow's SAME, as DeepMind trained its published NFNets: for a
    strided conv on an even input it pads one pixel after and none before, where the default
    (kernel // 2 on both sides) pads both; stride-1 convs are padded alike either way.

    Eval cache: in eval mode without autograd the standardised weight is computed once and
    reused. It is rebuilt when weight or gain change through autograd-visible in-place ops
    (optimiser steps, ``load_state_dict``) and dropped at every ``train()`` / ``eval()`` call.
    Writes through ``.data`` (DeepSpeed partitions, EMA swaps) bypass PyTorch's version counters:
    after them call ``model.eval()`` again or ``clear_weight_caches(model)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str | None = None,
        groups: int = 1,
        bias: bool = True,
        input_scale: float = 1.0,
        eps: float = 1e-4,
        eps_per_variance: bool = False,
    ) -> None:
        # SAME equals the symmetric kernel // 2 for stride 1 and an odd kernel: only strided
        # convs pad per input size (in forward).
        same_pad = padding == "same" and (stride > 1 or kernel_size % 2 == 0)
        if padding is None or padding == "same":
            padding = 0 if same_pad else kernel_size // 2
        elif isinstance(padding, str):
            raise ValueError(f"padding={padding!r}; expected an int, None or 'same'")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
        )
        self.same_pad = same_pad
        self.gain = nn.Parameter(torch.ones(out_channels))
        self.input_scale = float(input_scale)
        self.fan_in = self.weight[0].numel()
        # batch_norm normalises by sqrt(var + bn_eps); scale so that the result is
        # (W - mean) / sqrt(N * var + eps) with eps on the N * var scale.
        self._bn_eps = eps if eps_per_variance else eps / self.fan_in
        self._out_scale = self.input_scale / math.sqrt(self.fan_in)
        self._eval_cache: tuple[tuple, torch.Tensor] | None = None

    def reset_parameters(self) -> None:
        # Called by nn.Conv2d.__init__ (before ``gain`` exists) and by users re-initialising.
        # Variance-scaling fan-in normal (the standardisation makes the scale moot, not the shape).
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.weight[0].numel()))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if hasattr(self, "gain"):
            nn.init.ones_(self.gain)

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        return F.batch_norm(
            w.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=self.gain * self._out_scale,
            training=True,
            momentum=0.0,
            eps=self._bn_eps,
        ).reshape_as(w)

    def _cached_weight(self) -> torch.Tensor:
        # In-place updates through the parameter bump _version; see the class docstring for .data.
        key = (self.weight._version, self.gain._version, self.weight.data_ptr(), self.weight.dtype)
        if self._eval_cache is None or self._eval_cache[0] != key:
            with torch.no_grad():
                self._eval_cache = (key, self.standardized_weight())
        return self._eval_cache[1]

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_cache = not self.training and not torch.is_grad_enabled()
        weight = self._cached_weight() if use_cache else self.standardized_weight()
        if self.same_pad:
            (k, _), (s, _) = self.kernel_size, self.stride
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        same = ", padding=same" if self.same_pad else ""
        return super().extra_repr() + f", input_scale={self.input_scale:.4g}{same}"


def clear_weight_caches(model: nn.Module) -> None:
    """Drop every cached eval-mode weight, e.g. after swapping EMA weights in through ``.data``."""
    for m in model.modules():
        if isinstance(m, ScaledStdConv2d):
            m._eval_cache = None


class SqueezeExcite(nn.Module):
    """Mean-pool -> Linear -> ReLU -> Linear -> sigmoid; returns the [B, C, 1, 1] gate logits' sigmoid.

    The caller applies 2 * gate * x (SPEC §2), folded with other per-channel scalars.
    SE linears are plain (not weight-standardised).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.mean(dim=(2, 3))
        h = self.fc2(F.relu(self.fc1(h)))
        return torch.sigmoid(h)[:, :, None, None]


def stochastic_depth_mask(
    batch: int, drop_rate: float, like: torch.Tensor, scale_by_keep: bool = False
) -> torch.Tensor:
    """Per-sample keep mask [B, 1, 1, 1]. DeepMind does not rescale by 1/keep (SPEC §2)."""
    keep = 1.0 - drop_rate
    mask = torch.empty((batch, 1, 1, 1), dtype=like.dtype, device=like.device).bernoulli_(keep)
    return mask / keep if scale_by_keep else mask
