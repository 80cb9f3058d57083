"""The training loader: exact order across workers/ranks/resumes, transforms, corrupt data."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.loader import BatchPlan, RankBatches, make_loader
from pipeline.data.manifest import (
    Manifest,
    ShardIndex,
    ShardRecord,
    manifest_path,
    write_json_atomic,
)
from pipeline.data.order import GlobalOrder
from pipeline.data.reader import ShardReader
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


def _collect(reader, order, plan, start, steps, workers=0):
    ds = RankBatches(reader, order, TrainTransform(24), plan, start=start, steps=steps)
    return list(make_loader(ds, workers=workers))


def test_batches_cover_every_sample_once_per_epoch(dataset):
    reader = ShardReader(str(dataset), "d")
    order = GlobalOrder(reader.manifest.shard_sizes(), seed=4, block_shards=2)
    assert order.num_samples == 30 and len(reader.manifest.shards) > 2
    batches = _collect(reader, order, BatchPlan(6, 3, 1, 0), start=0, steps=10)  # 2 epochs
    ids = torch.cat([b["sample_ids"] for b in batches]).tolist()
    assert sorted(ids[:30]) == list(range(30)) and sorted(ids[30:]) == list(range(30))
    assert ids[:30] == order.samples(0, 30)
    labels = torch.cat([b["labels"] for b in batches])
    assert set(labels.tolist()) == {0, 1, 2}
    assert (
        batches[0]["images"].shape == (3, 3, 24, 24) and batches[0]["images"].dtype == torch.uint8
    )


def test_same_batches_for_any_workers_world_size_and_resume(dataset):
    reader = ShardReader(str(dataset), "d")
    order = GlobalOrder(reader.manifest.shard_sizes(), seed=9, block_shards=2)
    ref = _collect(reader, order, BatchPlan(6, 6, 1, 0), start=0, steps=7)

    def global_batches(world, micro, start, steps, workers):
        per_rank = [
            _collect(reader, order, BatchPlan(6, micro, world, r), start, steps, workers)
            for r in range(world)
        ]
        accum = 6 // world // micro
        out = []
        for step in range(steps):
            parts = [
                b for r in range(world) for b in per_rank[r][step * accum : (step + 1) * accum]
            ]
            out.append(
                (
                    torch.cat([p["sample_ids"] for p in parts]),
                    torch.cat([p["images"] for p in parts]),
                )
            )
        return out

    for world, micro, workers in [(2, 3, 0), (3, 1, 2), (2, 1, 1)]:
        got = global_batches(world, micro, 0, 7, workers)
        for (ids, imgs), want in zip(got, ref, strict=True):
            assert torch.equal(ids, want["sample_ids"]) and torch.equal(imgs, want["images"])
    # Resume at step 4 with another world size: identical to the uninterrupted steps 4..6.
    resumed = global_batches(3, 2, 4 * 6, 3, 0)
    for (ids, imgs), want in zip(resumed, ref[4:], strict=True):
        assert torch.equal(ids, want["sample_ids"]) and torch.equal(imgs, want["images"])


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


def _hostile_dataset(root):
    """A shard as an attacker or a broken disk could leave it: corrupt members, a pickle payload,
    a decompression bomb; then the tar truncated mid-way."""
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
    tar, index = build_tar(samples)
    cut = index[-1].members["jpg"].offset + 10
    tar = tar[:cut]
    (root / "h-000000.tar").write_bytes(tar)
    import fsspec

    fs = fsspec.filesystem("file")
    idx = ShardIndex(
        shard="h-000000.tar", fingerprint="x", sha256="x", bytes=len(tar), samples=index
    )
    write_json_atomic(fs, str(root / "h-000000.idx.json"), idx.model_dump())
    rec = ShardRecord(
        name="h-000000.tar",
        index="h-000000.idx.json",
        num_samples=len(samples),
        bytes=len(tar),
        sha256="x",
    )
    write_json_atomic(
        fs,
        manifest_path(str(root), "h"),
        Manifest(prefix="h", classes=["a", "b"], shards=[rec]).model_dump(),
    )


def test_corrupt_samples_are_skipped_counted_and_the_rest_intact(tmp_path):
    _hostile_dataset(tmp_path)
    reader = ShardReader(str(tmp_path), "h")
    order = GlobalOrder(reader.manifest.shard_sizes(), seed=0)
    batches = _collect(reader, order, BatchPlan(7, 7, 1, 0), start=0, steps=1)
    got = sorted(batches[0]["sample_ids"].tolist())
    assert got == [0, 4, 5]  # the pickle sample's image is fine; its .pyd is never decoded
    reasons = " | ".join(batches[0]["skipped"])
    assert len(batches[0]["skipped"]) == 4
    assert "empty file" in reasons and "decompression bomb" in reasons and "cut off" in reasons
