"""Model registry: ``create_model(name, num_classes=..., **overrides)`` and ``list_models()``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

C = TypeVar("C")

_REGISTRY: dict[str, tuple[str, Callable[..., nn.Module]]] = {}


def register_model(name: str, family: str):
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = (family, factory)
        return factory

    return decorator


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, (fam, _) in _REGISTRY.items() if family is None or fam == family)


def create_model(name: str, num_classes: int = 1000, **overrides) -> nn.Module:
    """Build a registered model. Wrap in ``torch.device("meta")`` to size huge models for free."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {list_models()}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name][1](num_classes=num_classes, **overrides)


def replace_cfg(cfg: C, overrides: dict[str, Any], model_name: str) -> C:
    """``dataclasses.replace`` with a one-line error for unknown keys; YAML lists become tuples."""
    fields = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {model_name}; expected any of {fields}"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(cfg, **fixed)


def register_variants(
    variants: dict[str, C], build: Callable[[C, int], nn.Module], family: str
) -> None:
    """Register one factory per config in a variant table; overrides replace config fields."""
    for name, cfg in variants.items():

        def factory(num_classes: int = 1000, _name=name, _cfg=cfg, **overrides) -> nn.Module:
            return build(replace_cfg(_cfg, overrides, _name), num_classes)

        factory.__name__ = name
        register_model(name, family)(factory)
