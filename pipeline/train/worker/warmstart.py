"""Start a run from another run's weights (fine-tuning), read from safetensors only.

`init.from_run` names a finished run directory (its final/model_ema.safetensors, or
final/model.safetensors with init.weights=live) or a .safetensors file. Everything but the
classifier must match the model being trained; the classifier is re-initialised for the new
classes unless init.keep_head is set. The driver checks the file's header (architecture and
class count, no tensors read) before any worker starts; each worker then loads the tensors into
its model before DeepSpeed wraps it. A resumed run loads them too, then its checkpoint wins.
"""

from __future__ import annotations

import json
import struct

import fsspec
import torch
from safetensors.torch import load as load_safetensors

from pipeline.config import UserError
from pipeline.train.config import InitSection

MAX_HEADER = 100 << 20  # a safetensors header is JSON: names, dtypes, shapes, metadata


def source_path(init: InitSection) -> str:
    src = (init.from_run or "").rstrip("/")
    if src.endswith(".safetensors"):
        return src
    name = "model_ema.safetensors" if init.weights == "ema" else "model.safetensors"
    return f"{src}/final/{name}"


def read_header(path: str) -> dict:
    """The safetensors header of `path` (any fsspec URL): {name: {dtype, shape, ...}, ...}."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isdir(root):
        raise ValueError(f"{path} is a directory, not a safetensors file")
    with fs.open(root, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 0 < size <= MAX_HEADER:
            raise ValueError(f"{path} is not a safetensors file")
        try:
            return json.loads(f.read(size))
        except ValueError:
            raise ValueError(f"{path} is not a safetensors file (bad header)") from None


def check_source(
    init: InitSection, model_name: str, classes: int, padding: str | None = None
) -> str:
    """Preflight: the weights exist and fit the model; returns their path. One line otherwise."""
    path = source_path(init)
    try:
        header = read_header(path)
    except FileNotFoundError:
        hint = "; a run trained without EMA has init.weights=live" if init.weights == "ema" else ""
        raise UserError(
            f"init.from_run={init.from_run!r}: {path} not found; expected a finished pretraining"
            f" run directory (re-run its pretrain command to finish it) or a .safetensors file{hint}"
        ) from None
    except ValueError as e:
        raise UserError(f"init.from_run={init.from_run!r}: {e}") from None
    meta = header.get("__metadata__") or {}
    if meta.get("model") and meta["model"] != model_name:
        raise UserError(
            f"init.from_run={init.from_run!r} holds {meta['model']} weights but"
            f" model.name={model_name}; expected the same architecture"
        )
    if meta.get("padding", "symmetric") != (padding or "symmetric"):
        raise UserError(
            f"init.from_run={init.from_run!r} holds weights trained with padding="
            f"{meta.get('padding', 'symmetric')} but model.padding={padding or 'symmetric'};"
            f" expected model.padding={meta.get('padding', 'symmetric')}"
        )
    if init.keep_head and meta.get("classes") and int(meta["classes"]) != classes:
        raise UserError(
            f"init.keep_head=true but {path} has {meta['classes']} classes and the data"
            f" {classes}; expected equal counts, or keep_head=false for a fresh head"
        )
    return path


def classifier_prefix(model: torch.nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head)


def load_weights(model: torch.nn.Module, path: str, keep_head: bool) -> list[str]:
    """Copy the tensors at `path` into `model`; returns the names left freshly initialised."""
    fs, root = fsspec.core.url_to_fs(path)
    tensors = load_safetensors(fs.cat_file(root))
    head = classifier_prefix(model) + "."
    own = model.state_dict()
    fresh, take = [], {}
    for name, value in own.items():
        if name.startswith(head) and not keep_head:
            fresh.append(name)
            continue
        if name not in tensors or tensors[name].shape != value.shape:
            got = tuple(tensors[name].shape) if name in tensors else "nothing"
            raise ValueError(f"{path}: {name} is {got}; expected {tuple(value.shape)}")
        take[name] = tensors[name]
    model.load_state_dict(take, strict=False)
    return fresh
