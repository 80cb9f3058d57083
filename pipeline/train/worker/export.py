"""Consolidated fp32 weights out of a DeepSpeed engine of any ZeRO stage, saved as safetensors.

ZeRO 1/2/3 keep the fp32 master weights partitioned; DeepSpeed's `safe_get_full_fp32_param`
gathers one parameter at a time (a collective: every rank calls it, in the same order), so the
peak extra memory is one parameter, not the model. Buffers are replicated on every rank.

`write_weights` streams them into the file one parameter at a time (the safetensors header
first: every shape is known before anything is gathered), so exporting F7+ (3.3 GB in fp32)
from a ZeRO-3 run costs one parameter of memory, not two copies of the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import uuid

import torch
from safetensors.torch import save

from pipeline.storage import atomic_write, is_local

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}  # fmt: skip


def _full_params(engine):
    """(name, whole fp32 parameter) one at a time, gathered under ZeRO (every rank, in order)."""
    from deepspeed.utils import safe_get_full_fp32_param

    stage = engine.zero_optimization_stage()
    for name, p in engine.module.named_parameters():
        yield name, (safe_get_full_fp32_param(p) if stage else p.detach()).float()


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The whole model's fp32 parameters and buffers, on the CPU, on every rank."""
    module = engine.module
    out = {name: full.cpu().clone() for name, full in _full_params(engine)}
    for name, b in module.named_buffers():
        out[name] = b.detach().cpu().clone()
    return out


def save_safetensors(fs, path: str, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomic write of a safetensors file (any fsspec filesystem)."""
    payload = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write(fs, path, payload)


def write_weights(engine, fs, path: str, metadata: dict, write: bool) -> dict[str, torch.Tensor]:
    """Every rank calls this (one gather per parameter); the rank with `write` streams the fp32
    parameters and the buffers to a safetensors file at `path` (fsspec; readers see the old
    file or the whole new one). Returns the buffers."""
    module = engine.module
    stage = engine.zero_optimization_stage()
    params = list(module.named_parameters())
    buffers = {n: b.detach().cpu().clone() for n, b in module.named_buffers()}
    entries = [(n, torch.float32, tuple(p.ds_shape if stage == 3 else p.shape)) for n, p in params]
    entries += [(n, b.dtype, tuple(b.shape)) for n, b in buffers.items()]
    header, offset = {"__metadata__": metadata}, 0
    for name, dtype, shape in entries:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    out, tmp = None, None
    if write:
        local = path if is_local(fs) else os.path.join(tempfile.mkdtemp(), "weights")
        tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        out = open(tmp, "wb")  # noqa: SIM115 (closed below, after the collectives)
        out.write(struct.pack("<Q", len(head)) + head)
    try:
        for _, full in _full_params(engine):
            if out is not None:
                out.write(full.contiguous().cpu().numpy().data)
        if out is not None:
            for b in buffers.values():
                out.write(b.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            out.close()
            if is_local(fs):
                os.replace(tmp, path)
            else:  # one whole-object upload: atomic on object stores
                fs.put_file(tmp, path)
    finally:
        if out is not None:
            out.close()
            if is_local(fs):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)  # only left behind when something failed
            else:
                shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)
    return buffers
