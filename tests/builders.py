"""Builders several test files share (instead of importing from each other)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.manifest import read_manifest
from pipeline.ingest.run import IngestConfig, ingest
from pipeline.models import create_model
from pipeline.train.components import AgcSection, OptimizerSection

ROOT = Path(__file__).resolve().parents[1]


# from tests/unit/test_agc.py
def agc_zoo():
    """Conv, grouped conv, linear, bias, gain, scalar; gradients at very different scales so that
    some units clip and some do not; one near-zero weight row exercises eps; one zero gradient row
    exercises the 1e-6 guard."""
    shapes = [(16, 8, 3, 3), (32, 4, 3, 3), (10, 24), (24,), (16,), (), (5, 7), (12, 3, 1, 1)]
    params, grads = [], []
    for k, s in enumerate(shapes):
        p = torch.randn(s)
        g = torch.randn(s) * (10.0 ** (k % 4 - 3))  # 1e-3 .. 1
        params.append(p)
        grads.append(g)
    params[0][0].mul_(1e-5)  # ||W_i|| < eps -> floor at eps
    grads[2][0].zero_()  # ||G_i|| = 0 -> guard, no NaN
    return params, grads


# from tests/unit/test_agc.py
def reference_agc(param: torch.Tensor, grad: torch.Tensor, clipping: float, eps: float = 1e-3):
    """DeepMind's clip_grads, transcribed literally for one tensor."""
    if param.ndim <= 1:
        p_norm = param.norm().reshape(())
        g_norm = grad.norm().reshape(())
    else:
        dims = tuple(range(1, param.ndim))
        p_norm = param.pow(2).sum(dim=dims, keepdim=True).sqrt()
        g_norm = grad.pow(2).sum(dim=dims, keepdim=True).sqrt()
    max_norm = p_norm.clamp_min(eps) * clipping
    clipped = grad * (max_norm / g_norm.clamp_min(1e-6))
    return torch.where(g_norm > max_norm, clipped, grad)


# from tests/unit/test_index.py
def shardwriter_set(folder: Path, count: int = 25, per_shard: int = 10, label=True) -> str:
    """img2dataset's layout, written by webdataset's own ShardWriter: <key>.jpg, <key>.txt (a
    caption), <key>.json (metadata, here with a class name); returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(count):
            meta = {"url": f"http://example.com/{i}.jpg", "status": "success"}
            if label:
                meta["label"] = NAMES[i % 3]
            sink.write({"__key__": f"{i:09d}", "jpg": jpeg_bytes(render(i % 3, 0, i, 32)),
                        "txt": f"a photo of a {NAMES[i % 3]}", "json": meta})  # fmt: skip
    last = (count - 1) // per_shard
    return str(folder / f"{{00000..{last:05d}}}.tar")


# from tests/unit/test_index.py
NAMES = ["cat", "dog", "owl"]


# from tests/e2e/test_engine_agc.py
def engine_model(classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("nfnet_nano0", num_classes=classes, drop_rate=0.0, stochdepth_rate=0.0)


# from tests/e2e/test_engine_agc.py: the reference steps use HYPER, the engine OPTIMIZER (the same)
HYPER = dict(lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-3, clipping=0.01, eps=1e-3)
OPTIMIZER = OptimizerSection(momentum=HYPER["momentum"], nesterov=HYPER["nesterov"],
                             weight_decay=HYPER["weight_decay"],
                             agc=AgcSection(clipping=HYPER["clipping"], eps=HYPER["eps"]))  # fmt: skip


# from tests/unit/test_scaling_fits.py
def chinchilla_csv() -> Path:
    """Epoch AI's extraction of Chinchilla's Figure 4 (SPEC §7), vendored in tests/data."""
    env = os.environ.get("NFSCALE_CHINCHILLA_CSV")
    path = Path(env) if env else ROOT / "tests" / "data" / CHINCHILLA_NAME
    assert path.is_file(), f"{path} is missing"
    return path


# from tests/unit/test_scaling_fits.py
CHINCHILLA_NAME = "chinchilla_svg_extracted_data.csv"


# for tests/unit/test_ingest.py and tests/e2e/test_ingest_object_stores.py
def jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def image_tree(root: Path) -> Path:
    """3 classes x 6 JPEGs, one oversized PNG, one non-image, one empty file, one bomb header."""
    rng = np.random.default_rng(0)
    for c in ["cat", "dog", "emu"]:
        (root / c).mkdir(parents=True)
        for i in range(6):
            (root / c / f"{i}.jpg").write_bytes(jpeg(rng, 30 + 4 * i, 40))
    Image.fromarray((rng.random((300, 90, 3)) * 255).astype("uint8")).save(root / "dog" / "big.png")
    (root / "cat" / "notes.jpg").write_bytes(b"plain text, not an image")
    (root / "emu" / "empty.png").write_bytes(b"")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 Mpx of nothing, compresses to ~50 KB
    (root / "emu" / "bomb.png").write_bytes(bomb.getvalue())
    return root


def ingest_config(src, out, **kw) -> IngestConfig:
    return IngestConfig(
        input=str(src), output=str(out), prefix="t", shard_bytes=6000, max_side=128, **kw
    )


def round_trip(tree: Path, out_url: str, storage_options: dict, parallel: bool = False):
    """Ingest `tree` to `out_url`; the manifest read back equals the one written, and every
    shard's bytes hash to its manifest entry."""
    m = ingest(ingest_config(tree, out_url, parallel=parallel, storage_options=storage_options),
               progress=False)  # fmt: skip
    fs, root = fsspec.core.url_to_fs(out_url, **storage_options)
    assert read_manifest(f"{out_url}/t.manifest.json", storage_options) == m
    for rec in m.shards:
        assert hashlib.sha256(fs.cat_file(f"{root}/{rec.name}")).hexdigest() == rec.sha256
    return m


# for tests/unit/test_job_dedup.py and tests/e2e/test_job_dedup_demo.py
def dedup_audit(out: Path) -> list[dict]:
    """The dedup job's audit records (duplicates.jsonl)."""
    return [json.loads(x) for x in (out / "duplicates.jsonl").read_text().splitlines()]
