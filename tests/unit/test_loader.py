"""The training loader: exact order across workers/ranks/resumes, transforms, corrupt data."""

import hashlib
import io
import os
import pickle
import uuid

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.cache import CachedShards, ShardCache
from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.manifest import (
    Manifest,
    ShardIndex,
    ShardRecord,
    manifest_path,
    write_json_atomic,
)
from pipeline.data.order import GlobalOrder, canonical_batch
from pipeline.data.plan import Use
from pipeline.data.shards import ShardStore
from pipeline.data.transforms import (
    MEAN,
    STD,
    EvalTransform,
    TrainTransform,
    decode_region,
    normalize,
)
from pipeline.ingest.run import IngestConfig, ingest
from pipeline.ingest.tarwriter import build_tar
from tests.loading import one_big_shard, peak_rss, rank_batches


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    for c in range(3):
        (root / "raw" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            (root / "raw" / f"c{c}" / f"{i}.jpg").write_bytes(jpeg_bytes(render(c, 0, i, 40)))
    ingest(IngestConfig(input=str(root / "raw"), output=str(root / "shards"), prefix="d",
                        shard_bytes=5000, parallel=False), progress=False)  # fmt: skip
    return root / "shards"


def _global_batches(dataset, tmp_path, world, micro, start, steps, workers, partitions=6):
    """(ids, images) of each global batch: every rank's micro-batches, rank after rank."""
    per_rank = [
        rank_batches(
            str(dataset),
            "d",
            tmp_path,
            global_batch=6,
            world=world,
            rank=r,
            micro=micro,
            partitions=partitions,
            start=start,
            steps=steps,
            workers=workers,
            res=24,
            seed=9,
        )
        for r in range(world)
    ]
    accum = 6 // world // micro
    out = []
    for step in range(steps):
        parts = [b for r in range(world) for b in per_rank[r][step * accum : (step + 1) * accum]]
        out.append((torch.cat([p.sample_ids for p in parts]),
                    torch.cat([p.images for p in parts])))  # fmt: skip
    return out


def test_batches_cover_every_sample_once_per_epoch(dataset, tmp_path):
    store = ShardStore(str(dataset), "d")
    order = GlobalOrder(store.table.sizes.tolist(), seed=4, partitions=3, block_shards=2)
    assert order.num_samples == 30 and len(store.table) > 2
    batches = rank_batches(str(dataset), "d", tmp_path, global_batch=6, micro=3, partitions=3,
                           steps=10, res=24, seed=4)  # 2 epochs  # fmt: skip
    ids = torch.cat([b.sample_ids for b in batches]).tolist()
    assert sorted(ids[:30]) == list(range(30)) and sorted(ids[30:]) == list(range(30))
    assert ids[:30] == [i for s in range(5) for i in canonical_batch(order, 6 * s, 6)]
    labels = torch.cat([b.labels for b in batches])
    assert set(labels.tolist()) == {0, 1, 2}
    assert batches[0].images.shape == (3, 3, 24, 24) and batches[0].images.dtype == torch.uint8


def test_same_batches_for_any_workers_world_size_and_resume(dataset, tmp_path):
    ref = _global_batches(dataset, tmp_path, 1, 6, 0, 7, 0)
    for world, micro, workers in [(2, 3, 0), (3, 1, 2), (2, 1, 1)]:
        got = _global_batches(dataset, tmp_path, world, micro, 0, 7, workers)
        for (ids, imgs), (want_ids, want_imgs) in zip(got, ref, strict=True):
            assert torch.equal(ids, want_ids) and torch.equal(imgs, want_imgs)
    # Resume at step 4 with another world size: identical to the uninterrupted steps 4..6.
    resumed = _global_batches(dataset, tmp_path, 3, 2, 4 * 6, 3, 0)
    for (ids, imgs), (want_ids, want_imgs) in zip(resumed, ref[4:], strict=True):
        assert torch.equal(ids, want_ids) and torch.equal(imgs, want_imgs)


def test_transforms():
    big = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype("uint8"))
    data = jpeg_bytes(big, 95)
    rng = np.random.default_rng(1)
    a = TrainTransform(32)(data, np.random.default_rng(5))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, TrainTransform(32)(data, np.random.default_rng(5)))
    assert not torch.equal(a, TrainTransform(32)(data, rng))
    assert EvalTransform(32, crop_pct=0.875)(data).shape == (3, 32, 32)
    # The reduced-scale JPEG decode (1/8 here) shows the same region as a full PIL decode.
    box = (50.0, 40.0, 350.0, 280.0)
    fast = decode_region(data, box, 32).permute(1, 2, 0).numpy().astype(np.float32)
    slow = Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32), Image.BILINEAR, box=box)
    assert np.abs(fast - np.asarray(slow, np.float32)).mean() < 12
    png = io.BytesIO()
    big.save(png, "PNG")  # the non-JPEG path
    assert TrainTransform(16)(png.getvalue(), rng).shape == (3, 16, 16)
    x = normalize(torch.full((1, 3, 2, 2), 128, dtype=torch.uint8))
    want = torch.tensor([(128 - m) / sd for m, sd in zip(MEAN, STD, strict=True)])
    assert x.dtype == torch.float32 and torch.allclose(x[0, :, 0, 0], want)


def _hostile_dataset(root, fs=None, cut=True, manifest_of_cut=True):
    """A shard as an attacker or a broken disk could leave it: corrupt members, a pickle payload,
    a decompression bomb; then the tar truncated mid-way (``cut``). ``manifest_of_cut``: the
    manifest describes the truncated tar (ingest wrote it so); else the whole one, so the
    stored shard fails its size and sha256 check. Returns the shard name."""
    good = jpeg_bytes(render(0, 0, 0, 32))
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    samples = [
        ("000000000", {"jpg": good, "cls": b"0"}),
        ("000000001", {"jpg": b"", "cls": b"1"}),  # zero-byte image
        ("000000002", {"jpg": b"GIF89a not really", "cls": b"1"}),  # non-image bytes
        ("000000003", {"png": bomb.getvalue(), "cls": b"0"}),  # decompression bomb
        ("000000004", {"jpg": good, "cls": b"1", "pyd": pickle.dumps(Evil())}),  # pickle member
        ("000000005", {"jpg": good, "cls": b"0"}),
        ("000000006", {"jpg": good, "cls": b"1"}),  # lost to truncation
    ]
    whole, index = build_tar(samples)
    tar = whole[: index[-1].members["jpg"].offset + 10] if cut else whole
    described = tar if manifest_of_cut else whole
    fs = fs or fsspec.filesystem("file")
    root = str(root)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/h-000000.tar", tar)
    sha = hashlib.sha256(described).hexdigest()
    idx = ShardIndex(shard="h-000000.tar", fingerprint="x", sha256=sha, bytes=len(described),
                     samples=index)  # fmt: skip
    write_json_atomic(fs, f"{root}/h-000000.idx.json", idx.model_dump())
    rec = ShardRecord(name="h-000000.tar", index="h-000000.idx.json", num_samples=len(samples),
                      bytes=len(described), sha256=sha)  # fmt: skip
    manifest = Manifest(prefix="h", classes=["a", "b"], shards=[rec])
    write_json_atomic(fs, manifest_path(root, "h"), manifest.model_dump())
    return rec.name


def test_corrupt_samples_are_skipped_counted_and_the_rest_intact(tmp_path):
    _hostile_dataset(tmp_path / "data")
    batches = rank_batches(str(tmp_path / "data"), "h", tmp_path / "cache", global_batch=7)
    got = sorted(batches[0].sample_ids.tolist())
    assert got == [0, 4, 5]  # the pickle sample's image is fine; its .pyd is never decoded
    reasons = " | ".join(batches[0].skipped)
    assert len(batches[0].skipped) == 4
    assert "empty file" in reasons and "decompression bomb" in reasons and "cut off" in reasons


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_shard_failing_its_checksum_is_fetched_again_then_skipped_by_name(tmp_path, where):
    """A stored shard that is not the one the manifest describes (truncated after ingest, or
    with flipped bytes): downloaded a second time, then skipped with its name in the log, its
    samples counted as skipped; the shard itself is left as it was."""
    if where == "local":
        root, fs = str(tmp_path / "data"), None
        name = _hostile_dataset(root, cut=True, manifest_of_cut=False)  # truncated
    else:
        root, fs = f"memory://bad-{uuid.uuid4().hex[:6]}", fsspec.filesystem("memory")
        name = _hostile_dataset(root, fs, cut=False)
        path = f"{root}/{name}"
        data = bytearray(fs.cat_file(path))
        data[700] ^= 0xFF  # same size, other bytes
        fs.pipe_file(path, bytes(data))
    before = fsspec.core.url_to_fs(f"{root}/{name}")[0].cat_file(f"{root}/{name}")
    lines = []
    batches = rank_batches(root, "h", tmp_path / "cache", global_batch=7, log=lines.append)
    assert batches[0].sample_ids.tolist() == [] and len(batches[0].skipped) == 7
    assert len(lines) == 1 and f"shard {name} is skipped, its 7 samples" in lines[0], lines
    reason = "truncated or wrong size" if where == "local" else "does not match the manifest"
    assert reason in lines[0]
    if where == "memory":  # the remote path tried twice; a local file is checked where it is
        assert "(downloaded 2 times)" in lines[0]
    assert fsspec.core.url_to_fs(f"{root}/{name}")[0].cat_file(f"{root}/{name}") == before


def test_a_loader_process_holds_no_shard_in_memory(tmp_path, workers=2):
    """Peak RSS of the loader processes is the same at 1 MiB and 256 MiB shards: samples are
    read from the cached file by offset, never as a whole-shard copy."""
    for mib in (1, 256):
        one_big_shard(str(tmp_path / f"s{mib}"), mib)
    small = peak_rss(str(tmp_path / "s1"), tmp_path / "cache", workers)[0]
    big, with_copy = peak_rss(str(tmp_path / "s256"), tmp_path / "cache", workers,
                              then_read=str(tmp_path / "s256" / "m-000000.tar"))  # fmt: skip
    print(f"peak RSS with {workers} loader workers (MiB): 1 MiB shards {small:.0f}, 256 MiB"
          f" shards {big:.0f}, then with a whole-shard copy {with_copy:.0f}")  # fmt: skip
    assert big - small < 48
    assert with_copy - small > 200  # what the 4-shard LRU reader held; the measurement sees it


def test_the_cache_stays_within_its_bound_and_deletes_each_shard_after_its_last_use(tmp_path):
    """Downloads (from memory://, a non-local store) run ahead by at most `prefetch` uses and
    `capacity` bytes; a shard used again while held is not fetched twice; each file goes once
    its last use is consumed; the folder goes with the cache."""
    root = f"memory://cache-{uuid.uuid4().hex[:6]}"
    for c in range(2):
        for i in range(18):
            fsspec.filesystem("memory").pipe_file(f"{root}/raw/c{c}/{i}.jpg",
                                                  jpeg_bytes(render(c, 0, i, 24)))  # fmt: skip
    ingest(IngestConfig(input=f"{root}/raw", output=f"{root}/shards", prefix="c",
                        max_shard_samples=3, parallel=False), progress=False)  # fmt: skip
    store = ShardStore(f"{root}/shards", "c")
    assert len(store.table) == 12
    uses = sorted([Use(i, i, i) for i in range(12)] + [Use(1, 4, 2)])  # shard 2 twice, overlapping
    largest = int(store.table.bytes.max())
    directory = str(tmp_path / "cache")
    cache = ShardCache(store, directory, uses, 3 * largest, 2, log=print).start()
    reader = CachedShards(store, directory)
    held = []
    for item in range(12):
        got = reader.read(item, [0, 1, 2])
        assert all(isinstance(x, tuple) and x[0][:2] == b"\xff\xd8" for x in got), got
        held.append(len([p for p in os.listdir(directory) if p.endswith(".tar")]))
        cache.consumed(item)
    cache.close()
    assert cache.stats.downloads == 12 and cache.stats.bad_shards == []
    assert cache.stats.bytes_fetched == int(store.table.bytes.sum())  # each shard's bytes once
    assert cache.stats.peak_bytes <= 3 * largest and max(held) <= 3, held
    assert not os.path.exists(directory)
