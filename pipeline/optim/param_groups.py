"""Parameter groups: weight-decay exclusions and the AGC set (SPEC §3-4).

No weight decay on tensors with ndim <= 1: WS gains, biases, SkipInit scalars, BN affine.
AGC on every trainable parameter except the classifier weight.
"""

from __future__ import annotations

from torch import nn


def decays(param: nn.Parameter) -> bool:
    return param.ndim >= 2


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if decays(p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def classifier_weight(model: nn.Module) -> nn.Parameter:
    if not hasattr(model, "get_classifier"):
        raise TypeError(
            f"{type(model).__name__} has no get_classifier(); cannot exclude it from AGC"
        )
    return model.get_classifier().weight


def agc_parameters(model: nn.Module) -> list[nn.Parameter]:
    excluded = classifier_weight(model)
    return [p for p in model.parameters() if p.requires_grad and p is not excluded]


def agc_parameter_names(model: nn.Module) -> list[str]:
    excluded = classifier_weight(model)
    return [n for n, p in model.named_parameters() if p.requires_grad and p is not excluded]
