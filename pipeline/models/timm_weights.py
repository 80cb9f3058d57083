"""DeepMind's published NFNets, as timm ships them (`dm_nfnet_f0` ... `dm_nfnet_f6`) or as DeepMind
does (`F0_haiku.npz`, renamed into timm's layout by `haiku_weights`), mapped onto our names and
shapes, so a fine-tune can start from the ImageNet weights.

timm names a block `stages.<stage>.<index>`; we number blocks through the stages (`blocks.<k>`).
Its squeeze-excite layers are 1x1 convs and its gains [C, 1, 1, 1]; ours are Linear and [C].
The weights came from DeepMind's TensorFlow-style convolutions: build the model with
padding="same" (`model.padding: same` in a run's config) to compute what they were trained to.
timm's own epsilon convention (rsqrt(var + 1e-5)) differs from DeepMind's rsqrt(N * var + 1e-4)
by a relative 1e-5 / var per layer; `create_model(..., ws_eps=1e-5, ws_eps_per_variance=True)`
reproduces timm's logits exactly (tests/unit/test_timm_weights.py).
"""

from __future__ import annotations

import re

import torch

from pipeline.models.nfnet import VARIANTS

# timm's block-level names -> ours (per block), and the model-level ones.
_BLOCK = {"downsample.conv": "shortcut", "attn_last.fc1": "se.fc1", "attn_last.fc2": "se.fc2",
          "conv1": "conv1", "conv2": "conv2", "conv2b": "conv2b", "conv3": "conv3"}  # fmt: skip
_STAGE_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.(.+)$")


def _depths_and_widths(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    blocks: dict[int, set[int]] = {}
    for key in state:
        if m := _STAGE_KEY.match(key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(blocks)
    depths = tuple(len(blocks[s]) for s in stages)
    widths = tuple(int(state[f"stages.{s}.0.conv3.weight"].shape[0]) for s in stages)
    return depths, widths


def variant_of(state: dict[str, torch.Tensor]) -> str:
    """Our variant with the state dict's depths and widths; one line if it is not an NFNet-F."""
    if "stem.conv1.weight" not in state or "stages.0.0.attn_last.fc1.weight" not in state:
        raise ValueError("not a timm dm_nfnet state dict (expected stem.conv1.* and"
                         " stages.<s>.<i>.attn_last.fc1.*: timm's dm_nfnet_f0..f6)")  # fmt: skip
    depths, widths = _depths_and_widths(state)
    for name, cfg in VARIANTS.items():
        if name.startswith("nfnet_f") and (cfg.depths, cfg.widths) == (depths, widths):
            return name
    raise ValueError(f"no NFNet-F variant has depths {depths} and widths {widths}")


def _our_name(key: str, block_index: dict[tuple[int, int], int]) -> str:
    if key.startswith("stem.conv"):  # stem.conv1..4 -> stem.0..3
        number, rest = key[len("stem.conv") :].split(".", 1)
        return f"stem.{int(number) - 1}.{rest}"
    if key.startswith("head.fc."):
        return key[len("head.") :]
    if key.startswith("final_conv."):
        return key
    m = _STAGE_KEY.match(key)
    if m is None:
        raise ValueError(f"unexpected tensor {key!r} in a dm_nfnet state dict")
    block = f"blocks.{block_index[int(m[1]), int(m[2])]}"
    if m[3] == "skipinit_gain":
        return f"{block}.skip_gain"
    layer, param = m[3].rsplit(".", 1)
    if layer not in _BLOCK:
        raise ValueError(f"unexpected tensor {key!r} in a dm_nfnet state dict")
    return f"{block}.{_BLOCK[layer]}.{param}"


def from_timm(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(our variant name, our state dict) from a timm dm_nfnet state dict. Every tensor is
    checked against the model's own names and shapes; anything missing or extra is one line."""
    from pipeline.models import create_model

    name = variant_of(state)
    depths, _ = _depths_and_widths(state)
    order = [(s, i) for s, depth in enumerate(depths) for i in range(depth)]
    block_index = {pair: k for k, pair in enumerate(order)}
    classes = int(state["head.fc.weight"].shape[0])
    with torch.device("meta"):
        expected = create_model(name, num_classes=classes).state_dict()
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = _our_name(key, block_index)
        if target not in expected:
            raise ValueError(f"{key} maps to {target}, which {name} does not have")
        want = expected[target].shape
        if value.numel() != want.numel():
            raise ValueError(f"{key} has shape {tuple(value.shape)}; {name}'s {target} is"
                             f" {tuple(want)}")  # fmt: skip
        ours[target] = value.detach().to(torch.float32).reshape(want).contiguous()
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise ValueError(f"the state dict lacks {len(missing)} of {name}'s tensors, e.g."
                         f" {missing[0]}")  # fmt: skip
    return name, ours


def _read_bytes(path: str) -> bytes:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs.cat_file(root)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (timm's hub files) or a torch.save file, read with
    the weights-only loader (no pickled code runs); any fsspec URL."""
    from safetensors.torch import load

    data = _read_bytes(path)
    if path.endswith(".safetensors"):
        return load(data)
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return state


def read_published(path: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(what the file is, its tensors under timm's dm_nfnet names): DeepMind's haiku release
    (`*.npz`, `*.pkl`: `haiku_weights`) or a timm state dict (anything else)."""
    if path.endswith((".npz", ".pkl")):
        from pipeline.models.haiku_weights import read_haiku, to_timm

        return "DeepMind haiku weights", to_timm(read_haiku(_read_bytes(path)))
    return "timm dm_nfnet weights", read_state_dict(path)


def convert_file(source: str, out: str) -> dict[str, str]:
    """Write `out` (.safetensors): `source`'s DeepMind NFNet weights (timm's or DeepMind's own
    file) under our names, with the header a run's `init.from_run` checks (model, classes,
    padding). Returns that header."""
    import fsspec
    from safetensors.torch import save

    from pipeline.storage import atomic_write

    if not out.endswith(".safetensors"):
        raise ValueError(f"--out {out}: expected a .safetensors path")
    kind, published = read_published(source)
    name, tensors = from_timm(published)
    meta = {"model": name, "classes": str(tensors["fc.weight"].shape[0]), "padding": "same",
            "source": f"{kind}: {source}"}  # fmt: skip
    fs, root = fsspec.core.url_to_fs(out)
    if "/" in root:
        fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
    atomic_write(fs, root, save(tensors, metadata=meta))
    return meta
