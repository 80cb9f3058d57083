"""DeepMind's own NFNet release (`F0_haiku.npz` ... `F6_haiku.npz`, storage.googleapis.com/
dm-nfnets), read without haiku, JAX or dill, and renamed into timm's `dm_nfnet_*` layout, so one
mapping (`timm_weights.from_timm`) checks every name and shape against our model.

The file, despite its suffix, is a dill pickle of haiku's params: a dict of module names to dicts
of numpy arrays (deepmind-research/nfnets/nfnet.py names the modules):

    NFNet/~/stem_conv0 .. stem_conv3          {w: HWIO, gain: [O], bias: [O]}
    NFNet/~/nf_block, nf_block_1, ...          {skip_gain: []}, blocks numbered through the stages
    NFNet/~/nf_block_k/~/conv0, conv1, conv1b, conv2, conv_shortcut   (WSConv2D as above)
    NFNet/~/nf_block_k/~/squeeze_excite/~/linear, linear_1            {w: [in, out], b: [out]}
    NFNet/~/final_conv, NFNet/~/linear         (the head)

Unpickling runs code named in the file, so ours admits only what such a file holds: numpy's
array and dtype reconstruction, dill's `_create_array` wrapper (reimplemented here), and dicts;
any other global is refused in one line before it is imported. A real `.npz` archive (np.savez)
with `<module>/<param>` keys is read too.

DeepMind standardises with rsqrt(max(N * var, 1e-4)), ours with rsqrt(N * var + 1e-4): the same
to 1e-4 relative per layer for trained weights (N * var near 1), as for timm's file.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile

import numpy as np
import torch

try:  # numpy 2 moved it; pickles written by numpy 1 still name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:
    from numpy.core import multiarray as _multiarray


def _create_array(f, args, state, npdict=None):
    """dill's `_create_array`: an ndarray from its reduce tuple (never given a __dict__ here)."""
    array = f(*args)
    array.__setstate__(state)
    if npdict:
        raise pickle.UnpicklingError("an array with attributes: not a haiku params file")
    return array


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{
        (f"{core}.multiarray", name): getattr(_multiarray, name)
        for core in ("numpy.core", "numpy._core")
        for name in ("_reconstruct", "scalar")
    },
    ("dill._dill", "_create_array"): _create_array,
    ("collections", "OrderedDict"): dict,
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"the pickle names {module}.{name}; expected only numpy"
                                         " arrays in dicts (DeepMind's *_haiku.npz)")  # fmt: skip
        return _ALLOWED[module, name]


def _read_archive(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    params: dict[str, dict[str, np.ndarray]] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        for key in archive.files:
            module, _, param = key.rpartition("/")
            if not module:
                raise ValueError(f"archive key {key!r}: expected <module>/<param>")
            params.setdefault(module, {})[param] = archive[key]
    return params


def read_haiku(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """{module: {param: array}} from a haiku params pickle or a flat `.npz` archive."""
    if data[:4] == b"PK\x03\x04":  # a zip: np.savez
        try:
            return _read_archive(data)
        except zipfile.BadZipFile as e:
            raise ValueError(f"not an .npz archive: {e}") from None
    try:
        params = _ArraysOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"not a haiku params file: {e}") from None
    if not isinstance(params, dict) or not all(
        isinstance(p, dict) and all(isinstance(a, np.ndarray) for a in p.values())
        for p in params.values()
    ):
        raise ValueError("not a haiku params file: expected {module: {param: array}}")
    return params


# Haiku's layer names -> timm's, inside a block and at the top.
_BLOCK_LAYERS = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
                 "conv_shortcut": "downsample.conv", "squeeze_excite/~/linear": "attn_last.fc1",
                 "squeeze_excite/~/linear_1": "attn_last.fc2"}  # fmt: skip
_PARAMS = {"w": "weight", "b": "bias", "bias": "bias", "gain": "gain"}
_BLOCK = re.compile(r"^nf_block(?:_(\d+))?(?:/~/(.+))?$")


def _tensor(param: str, value: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if param == "w" and t.ndim == 4:  # conv: HWIO -> OIHW
        return t.permute(3, 2, 0, 1).contiguous()
    if param == "w" and t.ndim == 2:  # linear: [in, out] -> [out, in]
        return t.t().contiguous()
    return t


def to_timm(params: dict[str, dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Haiku's params under timm's dm_nfnet names. A block that has a shortcut conv starts a
    stage (in every NFNet-F the first block of a stage changes width or stride)."""
    prefix = next((m.split("/~/", 1)[0] for m in params if "/~/" in m), "NFNet")
    blocks: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    top: dict[str, dict[str, np.ndarray]] = {}
    for module, values in params.items():
        if not module.startswith(f"{prefix}/~/"):
            raise ValueError(f"module {module!r}: expected {prefix}/~/...")
        local = module[len(prefix) + 3 :]
        if m := _BLOCK.match(local):
            blocks.setdefault(int(m[1] or 0), {})[m[2] or ""] = values
        else:
            top[local] = values
    state: dict[str, torch.Tensor] = {}
    stage, index = -1, 0
    for k in sorted(blocks):
        layers = blocks[k]
        stage, index = (stage + 1, 0) if "conv_shortcut" in layers else (stage, index + 1)
        if stage < 0:
            raise ValueError("the first block has no conv_shortcut: not an NFNet-F")
        for layer, values in layers.items():
            for param, value in values.items():
                if layer == "" and param == "skip_gain":
                    state[f"stages.{stage}.{index}.skipinit_gain"] = _tensor(param, value)
                elif layer in _BLOCK_LAYERS and param in _PARAMS:
                    name = f"stages.{stage}.{index}.{_BLOCK_LAYERS[layer]}.{_PARAMS[param]}"
                    state[name] = _tensor(param, value)
                else:
                    raise ValueError(f"unexpected parameter nf_block_{k}/{layer}:{param}")
    names = {**{f"stem_conv{i}": f"stem.conv{i + 1}" for i in range(4)},
             "final_conv": "final_conv", "linear": "head.fc"}  # fmt: skip
    for layer, values in top.items():
        for param, value in values.items():
            if layer not in names or param not in _PARAMS:
                raise ValueError(f"unexpected parameter {prefix}/~/{layer}:{param}")
            state[f"{names[layer]}.{_PARAMS[param]}"] = _tensor(param, value)
    return state
