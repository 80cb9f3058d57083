"""Reading a shard set the way one training rank does (order, read plan, shard cache, loader
workers), without a model: for the data-plane tests."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

from pipeline.data.demo_images import jpeg_bytes
from pipeline.data.loader import BatchPlan, CacheSettings, rank_stream
from pipeline.data.manifest import (
    Manifest,
    MemberSpan,
    SampleIndex,
    ShardIndex,
    ShardRecord,
    manifest_path,
    write_json_atomic,
)
from pipeline.data.order import GlobalOrder
from pipeline.data.plan import block_shards_per_rank
from pipeline.data.shards import ShardStore
from pipeline.data.transforms import TrainTransform

ROOT = Path(__file__).resolve().parents[1]


def rank_batches(
    url: str,
    prefix: str,
    cache_root: Path,
    *,
    global_batch: int,
    world: int = 1,
    rank: int = 0,
    micro: int | None = None,
    partitions: int = 1,
    block_shards: int = 2,
    workers: int = 0,
    start: int = 0,
    steps: int | None = None,
    res: int = 16,
    seed: int = 0,
    storage_options: dict | None = None,
    log=print,
) -> list[dict]:
    """Rank ``rank``'s micro-batches (default: one epoch of whole batches)."""
    store = ShardStore(url, prefix, storage_options)
    order = GlobalOrder(store.table.sizes.tolist(), seed, partitions, block_shards)
    plan = BatchPlan(global_batch, micro or global_batch // world, world, rank)
    steps = order.num_samples // global_batch if steps is None else steps
    held = block_shards_per_rank(order, world)
    settings = CacheSettings(str(cache_root / f"rank{rank}-{uuid.uuid4().hex[:8]}"),
                             2 * held * int(store.table.bytes.max()), held)  # fmt: skip
    stream = rank_stream(store, order, TrainTransform(res), plan, start, steps, workers,
                         settings, log)  # fmt: skip
    return list(stream)


def one_big_shard(url: str, mib: int, storage_options: dict | None = None) -> None:
    """Shard set ``m`` of one shard of about ``mib`` MiB (a 256x256 noise JPEG, repeated),
    written as a stream (nothing of its size in memory)."""
    rng = np.random.default_rng(0)
    image = jpeg_bytes(Image.fromarray((rng.random((256, 256, 3)) * 255).astype("uint8")), 95)
    count = max(2, mib * 2**20 // (len(image) + 1536))
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    index, digest = [], hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m-000000.tar")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(count):
                spans = {}
                for ext, data in (("cls", b"0"), ("jpg", image)):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    spans[ext] = MemberSpan(offset=tar.offset + 512, size=len(data))
                    tar.addfile(info, io.BytesIO(data))
                index.append(SampleIndex(key=f"{i:09d}", members=spans, label=0))
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                digest.update(chunk)
        size = os.path.getsize(path)
        fs.put_file(path, f"{root}/m-000000.tar")
    idx = ShardIndex(shard="m-000000.tar", fingerprint="x", sha256=digest.hexdigest(), bytes=size,
                     samples=index)  # fmt: skip
    write_json_atomic(fs, f"{root}/m-000000.idx.json", idx.model_dump())
    rec = ShardRecord(name="m-000000.tar", index="m-000000.idx.json", num_samples=count,
                      bytes=size, sha256=digest.hexdigest())  # fmt: skip
    manifest = Manifest(prefix="m", classes=["a"], shards=[rec])
    write_json_atomic(fs, manifest_path(root, "m"), manifest.model_dump())


PEAK_RSS = """
import json, sys, threading, time
from pathlib import Path
import psutil
from tests.loading import rank_batches
me, peak, done = psutil.Process(), [0], threading.Event()
def sample():  # the largest resident set of this process or a loader worker, while reading
    while not done.is_set():
        for p in [me, *me.children(recursive=True)]:
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                pass
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
batches = rank_batches(sys.argv[1], "m", Path(sys.argv[2]), global_batch=16, steps=1,
                       workers=int(sys.argv[3]), res=32, storage_options=json.loads(sys.argv[4]))
assert sum(len(b.sample_ids) for b in batches) == 16, batches
print(peak[0] / 2**20)
if sys.argv[5]:  # then hold a whole shard in memory: the measurement must see it
    data = open(sys.argv[5], "rb").read()
    time.sleep(0.05)
    print(peak[0] / 2**20)
done.set()
"""


def peak_rss(url: str, cache: Path, workers: int, storage_options: dict | None = None,
             then_read: str = "") -> list[float]:  # fmt: skip
    """Peak resident MiB of a loader process (or its workers) reading one step of shard set
    ``m`` at ``url``, in a fresh Python process; then, with ``then_read`` (a file), the peak
    again after reading that file whole into memory."""
    argv = [url, str(cache), str(workers), json.dumps(storage_options or {}), then_read]
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return [float(x) for x in out.stdout.split()]
