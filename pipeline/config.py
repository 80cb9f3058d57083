"""Typed configuration: pydantic models loaded from YAML, with dotted ``key=value`` overrides.

    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml", ["train.epochs=0.5"])

Every problem becomes a ``ConfigError`` carrying one line that names the bad key or value and
what was expected; entry points print it and exit non-zero before any resources are taken.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class UserError(ValueError):
    """Bad input from the user (a path, a file, a value); the message is one line for them."""


class RunStopped(RuntimeError):
    """A run that stopped itself for a reason the user must act on; the message is one line."""


class ConfigError(UserError):
    """A bad config file, key or value."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``; values parse as YAML."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r} conflicts with an earlier override of {part!r}"
                )
            node = child
        node[leaf] = value
    return tree


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


# A config file may build on another: `extends: ../pretrain/nano.yaml` (relative to the file,
# or a URL) takes that file's keys, then its own on top.
EXTENDS = "extends"


def read_yaml(path: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    data = _read_one(path)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"config file {path!r}: {EXTENDS} must name one config file")
    ref = parent if "://" in parent or os.path.isabs(parent) else (
        f"{path.rsplit('/', 1)[0]}/{parent}" if "://" in path
        else os.path.normpath(os.path.join(os.path.dirname(path), parent)))  # fmt: skip
    if ref in (*_chain, path):
        raise ConfigError(f"config file {path!r} extends itself through {parent!r}")
    return deep_merge(read_yaml(ref, (*_chain, path)), data)


def _read_one(path: str) -> dict[str, Any]:
    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found; expected a YAML file") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping, got {type(data).__name__}")
    return data


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the section that contains ``loc`` (for 'unknown key' messages)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def format_validation_error(model: type[BaseModel], err: ValidationError) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    if first["type"] == "missing":
        return f"missing config key {key!r}; set it in the config file or as {key}=..."
    if first["type"] == "extra_forbidden":
        return f"unknown config key {key!r}; expected one of {_fields_at(model, loc)}"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields: its message names the fields itself
        return f"bad config: {msg}{more}"
    return f"bad config value {key}={first.get('input')!r}: {msg}{more}"


def build_config(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(model, e)) from None
    except ValueError as e:  # model-level validators raising plain ValueError
        raise ConfigError(str(e)) from None


def load_config(model: type[M], path: str | None = None, overrides: list[str] | None = None) -> M:
    data = read_yaml(path) if path else {}
    return build_config(model, deep_merge(data, parse_overrides(overrides or [])))


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
