"""DeepMind's own release (`F0_haiku.npz`: a dill pickle of haiku's {module: {param: array}}) read
into our model. The files are not downloadable here, so the test writes them itself: timm's
dm_nfnet_f0 weights renamed to DeepMind's haiku modules (deepmind-research/nfnets/nfnet.py and
base.py name them; the inverse below is written from that source, not from our importer), in HWIO
and [in, out] layouts, pickled the way dill does (`dill._dill._create_array` around each array),
as plain pickle and as an .npz archive. Read back they must equal timm's tensors exactly, and
compute timm's logits to 1e-4 through our model. A pickle that names any other code is refused
before the code is imported."""

from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from pipeline.models import create_model
from pipeline.models.haiku_weights import read_haiku, to_timm
from pipeline.models.timm_weights import convert_file, from_timm
from pipeline.train.config import InitSection
from pipeline.train.worker.warmstart import check_source
from tests.timm_reference import TIMM_CONVENTION, reference_nfnet, relative

# timm's layer names -> DeepMind's haiku module names (nfnet.py: NFBlock.__init__, NFNet).
BLOCK = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
         "downsample.conv": "conv_shortcut", "attn_last.fc1": "squeeze_excite/~/linear",
         "attn_last.fc2": "squeeze_excite/~/linear_1"}  # fmt: skip


def haiku_params(state: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """timm's dm_nfnet state dict as DeepMind's haiku params."""
    params: dict[str, dict[str, np.ndarray]] = {}
    blocks = sorted({tuple(map(int, k.split(".")[1:3])) for k in state if k.startswith("stages.")})
    number = {pair: k for k, pair in enumerate(blocks)}  # haiku numbers blocks through the stages

    def put(module: str, param: str, value: torch.Tensor, linear: bool = False) -> None:
        a = value.detach().numpy()
        if param == "w" and linear:  # timm [out, in] (or a 1x1 conv) -> haiku [in, out]
            a = a.reshape(a.shape[0], a.shape[1]).T
        elif param == "w":  # OIHW -> HWIO
            a = a.transpose(2, 3, 1, 0)
        elif param == "gain":
            a = a.reshape(-1)
        params.setdefault(f"NFNet/~/{module}", {})[param] = np.ascontiguousarray(a)

    for key, value in state.items():
        layer, _, name = key.rpartition(".")
        if key.startswith("stages."):
            k = number[tuple(map(int, key.split(".")[1:3]))]
            block = "nf_block" + (f"_{k}" if k else "")
            if name == "skipinit_gain":
                put(block, "skip_gain", value)
                continue
            local = BLOCK[layer.split(".", 3)[3]]
            linear = local.startswith("squeeze")
            param = {"weight": "w", "bias": "b" if linear else "bias", "gain": "gain"}[name]
            put(f"{block}/~/{local}", param, value, linear)
        elif key.startswith("stem.conv"):
            put(f"stem_conv{int(layer[len('stem.conv'):]) - 1}", {"weight": "w"}.get(name, name),
                value)  # fmt: skip
        elif layer == "final_conv":
            put("final_conv", {"weight": "w"}.get(name, name), value)
        else:  # head.fc
            put("linear", {"weight": "w", "bias": "b"}[name], value, linear=True)
    return params


def dill_style(params) -> bytes:
    """Pickled as dill pickles an ndarray: `dill._dill._create_array(f, args, state, None)`. A
    stand-in dill._dill module exists only while writing: reading must not import dill."""
    fake = types.ModuleType("dill._dill")

    def _create_array(f, args, state, npdict=None):  # never called: only named in the file
        raise AssertionError

    _create_array.__module__, _create_array.__qualname__ = "dill._dill", "_create_array"
    fake._create_array = _create_array

    class DillLike(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is np.ndarray:
                f, args, state = obj.__reduce__()
                return _create_array, (f, args, state, None)
            return NotImplemented

    package = types.ModuleType("dill")
    package._dill = fake
    sys.modules.update({"dill": package, "dill._dill": fake})
    try:
        buf = io.BytesIO()
        DillLike(buf, protocol=3).dump(params)
    finally:
        del sys.modules["dill"], sys.modules["dill._dill"]
    return buf.getvalue()


def npz(params) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{f"{m}/{p}": a for m, values in params.items() for p, a in values.items()})
    return buf.getvalue()


@pytest.fixture(scope="module")
def f0(timm):
    model = reference_nfnet(timm, "dm_nfnet_f0")
    return model, haiku_params(model.state_dict())


@pytest.mark.parametrize("write", [dill_style, pickle.dumps, npz], ids=["dill", "pickle", "npz"])
def test_deepminds_file_reads_back_as_timms_tensors_exactly(f0, write):
    model, params = f0
    assert len(params) == 94  # F0's haiku modules: 4 stem, 12 blocks x 7, 4 shortcuts, 2 head
    data = write(params)
    if write is dill_style:
        assert b"dill._dill" in data and "dill" not in sys.modules
    got, want = to_timm(read_haiku(data)), model.state_dict()
    assert got.keys() == want.keys()
    for k in want:  # the same numbers in the same order: no transposition went astray
        assert got[k].numel() == want[k].numel(), k
        assert torch.equal(got[k].reshape(want[k].shape), want[k]), k


def test_deepminds_file_computes_timms_logits_through_our_model(f0, tmp_path):
    model, params = f0
    source = tmp_path / "F0_haiku.npz"
    source.write_bytes(dill_style(params))
    name, state = from_timm(to_timm(read_haiku(source.read_bytes())))
    ours = create_model(name, num_classes=10, **TIMM_CONVENTION).eval()
    ours.load_state_dict(state)
    x = torch.randn(2, 3, 71, 71, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative(ours(x), model(x)) <= 1e-4

    out = str(tmp_path / "nfnet_f0.safetensors")
    meta = convert_file(str(source), out)
    assert meta["model"] == "nfnet_f0" and meta["padding"] == "same"
    assert meta["source"].startswith("DeepMind haiku weights: ")
    assert check_source(InitSection(from_run=out, keep_head=True), "nfnet_f0", 10, "same") == out


class _Shell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_a_pickle_naming_other_code_is_refused_before_it_runs(f0, tmp_path):
    _, params = f0
    marker = tmp_path / "ran"
    hostile = {**params, "NFNet/~/linear": {"w": _Shell(f"touch {marker}")}}
    with pytest.raises(ValueError, match=r"the pickle names posix\.system; expected only numpy"):
        read_haiku(pickle.dumps(hostile))
    assert not marker.exists()

    odd = {**params, "NFNet/~/nf_block_3/~/conv9": {"w": np.zeros((1, 1, 1, 1), np.float32)}}
    with pytest.raises(ValueError, match=r"unexpected parameter nf_block_3/conv9:w"):
        to_timm(read_haiku(npz(odd)))
    short = {k: v for k, v in params.items() if not k.endswith("nf_block_5/~/conv1b")}
    with pytest.raises(ValueError, match=r"lacks 3 of nfnet_f0's tensors"):
        from_timm(to_timm(short))
    with pytest.raises(ValueError, match=r"not a haiku params file"):
        read_haiku(b"not a pickle")
