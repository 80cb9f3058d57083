"""Loader throughput per core at 224 px from local shards, against a naive PIL pipeline.

Sources are ImageNet-like: 500x375 JPEGs (quality 90) cut from the real photographs bundled with
scikit-image (random crops, flips, colour jitter), ingested by the real ingest path. Both
pipelines read the same shard bytes in one process with one thread (= per core):
- ours: the rank's loader (rank_stream: order, shard cache, reads by offset) + TrainTransform (libjpeg-turbo decode at reduced DCT scale when the crop
  allows, crop as a slice, torch's antialiased uint8 resize, flip);
- naive: full decode, convert to RGB, crop, resize, flip, as most hand-written loaders do.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.loader import BatchPlan, CacheSettings, rank_stream
from pipeline.data.order import GlobalOrder
from pipeline.data.shards import ShardStore
from pipeline.data.transforms import TrainTransform, random_resized_box
from pipeline.ingest.run import IngestConfig, ingest


def _photos() -> list[np.ndarray]:
    from skimage import data

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "motorcycle_left",
    ]
    out = []
    for n in names:
        try:
            img = getattr(data, n)()
        except Exception:  # some datasets need a download; skip those
            continue
        if img.ndim == 3 and img.shape[2] == 3:
            out.append(img)
    return out


def make_sources(root: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = _photos()
    for i in range(count):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = img.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BICUBIC)
        arr = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        (root / "c").mkdir(parents=True, exist_ok=True)
        img.save(root / "c" / f"{i:05d}.jpg", "JPEG", quality=90)


def naive_transform(data: bytes, rng: np.random.Generator, res: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    box = random_resized_box(*img.size, rng)
    img = img.crop(tuple(round(v) for v in box)).resize((res, res), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def run(count: int = 512, res: int = 224, micro: int = 32) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_sources(root / "raw", count)
        ingest(IngestConfig(input=str(root / "raw"), output=str(root / "shards"), prefix="b",
                            max_side=1024, parallel=False), progress=False)  # fmt: skip
        store = ShardStore(str(root / "shards"), "b")
        order = GlobalOrder(store.table.sizes.tolist(), seed=0, partitions=8)
        steps = count // micro
        cache = CacheSettings(str(root / "cache"), 1 << 40, 1 << 20)
        stream = rank_stream(store, order, TrainTransform(res), BatchPlan(micro, micro, 1, 0),
                             0, steps, 0, cache)  # fmt: skip
        first = next(stream)  # the shards are in the page cache: both pipelines read memory
        start = time.perf_counter()
        n = len(first.labels) + sum(len(b.labels) for b in stream)
        ours = (n - len(first.labels)) / (time.perf_counter() - start)

        tables = {s: store.fetch_index(s) for s in range(len(store.table))}
        members = []
        for sid in order.samples(0, steps * micro):
            ref = order.locate(sid)
            row = tables[ref.shard][ref.index]
            with open(store.tar_path(ref.shard), "rb") as f:
                members.append(os.pread(f.fileno(), int(row["size"]), int(row["offset"])))
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for data in members:
            torch.from_numpy(naive_transform(data, rng, res).copy()).permute(2, 0, 1)
        naive = len(members) / (time.perf_counter() - start)
    return {
        "images": n,
        "source_px": "500x375 JPEG q90",
        "res": res,
        "ours_img_per_s_per_core": ours,
        "naive_img_per_s_per_core": naive,
        "speedup": ours / naive,
        "note": f"single process, 1 thread; {math.ceil(count / micro)} micro-batches of {micro}",
    }


if __name__ == "__main__":
    print(run())
