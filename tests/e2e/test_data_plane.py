"""The data plane at cluster scale, on gs:// (the GCS emulator behind a byte-counting proxy), in
one Ray instance: ingest by Ray tasks is byte-identical to inline; every shard is downloaded
once per epoch by the rank that owns it, at 1, 2 and 3 ranks with 0 and 2 loader workers;
ray.data reads our shards; the dedup job on Ray equals its serial run; webdataset ShardWriter
shards (img2dataset's layout) on gs:// are indexed in place by Ray tasks and trained on by Ray
Train + DeepSpeed, also downloading each shard once."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec

from pipeline.config import load_config
from pipeline.data.demo_images import jpeg_bytes, render
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.data.manifest import read_manifest
from pipeline.dedup.job import DedupJobConfig, run_dedup
from pipeline.ingest.inplace import IndexConfig, index_shards
from pipeline.ingest.run import IngestConfig, ingest
from pipeline.train.config import PretrainConfig
from tests.builders import NAMES, shardwriter_set
from tests.storage_servers import faulty_proxy, gcs_emulator

ROOT = Path(__file__).resolve().parents[2]
# 576 samples: 48 batches of 12, an epoch exactly; at 3 ranks the 2 shards split between ranks
# are read twice: 2/48 = 4.2% more than the data set.
SHARDS, PER_SHARD, BATCH = 48, 12, 12


def _pool(tmp: Path, opts: dict):
    """The pool (two unreadable inputs among its images), ingested by Ray tasks and inline:
    byte-identical shards and manifests; then uploaded to gs://bucket/pool in one batch."""
    raw = tmp / "raw"
    for i in range(SHARDS * PER_SHARD):
        folder = raw / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.jpg").write_bytes(jpeg_bytes(render(i % 4, 0, i, 16)))
    (raw / "c0" / "notes.jpg").write_bytes(b"plain text, not an image")
    (raw / "c1" / "empty.png").write_bytes(b"")
    ray_made, inline = (
        ingest(IngestConfig(input=str(raw), output=str(tmp / name), prefix="pool",
                            max_shard_samples=PER_SHARD, parallel=parallel), progress=False)
        for name, parallel in (("pool", True), ("inline", False))
    )  # fmt: skip
    assert ray_made.model_dump(exclude={"settings"}) == inline.model_dump(exclude={"settings"})
    assert len(ray_made.skipped) == 2 and ray_made.num_samples == SHARDS * PER_SHARD
    for rec in ray_made.shards:
        assert (tmp / "pool" / rec.name).read_bytes() == (tmp / "inline" / rec.name).read_bytes()
    gcs = fsspec.filesystem("gs", **opts)
    files = sorted(str(p) for p in (tmp / "pool").iterdir())
    gcs.put(files, [f"bucket/pool/{Path(f).name}" for f in files])
    return ray_made


def _tar_bytes(counts, prefix: str) -> int:
    return sum(
        n
        for name, n in counts.read_bytes.items()
        if name.startswith(prefix) and name.endswith(".tar")
    )


def _rank_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Rank:
        def epoch(self, world: int, rank: int, workers: int, cache: str) -> tuple[list, int]:
            from tests.loading import rank_batches

            batches = rank_batches("gs://bucket/pool", "pool", Path(cache), global_batch=BATCH,
                                   world=world, rank=rank, partitions=6, block_shards=2,
                                   workers=workers, storage_options={"token": "anon"})  # fmt: skip
            return ([i for b in batches for i in b.sample_ids.tolist()],
                    sum(len(b.skipped) for b in batches))  # fmt: skip

    return Rank


def test_one_epoch_on_gs_downloads_each_shard_once_at_any_world_size(tmp_path, ray_cluster):
    import ray

    with gcs_emulator("bucket") as opts, faulty_proxy(os.environ["STORAGE_EMULATOR_HOST"],
                                                      fail_every=0) as (proxy, counts):  # fmt: skip
        env = {"STORAGE_EMULATOR_HOST": proxy, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        # The session's cluster (RAY_ADDRESS); this job's workers get the emulator's address.
        ray.init(runtime_env={"env_vars": {**env, "PYTHONPATH": str(ROOT)}}, log_to_driver=False)
        try:
            manifest = _pool(tmp_path, opts)
            os.environ["STORAGE_EMULATOR_HOST"] = proxy  # every read from here on is counted
            fsspec.get_filesystem_class("gs").clear_instance_cache()
            total = sum(s.bytes for s in manifest.shards)
            ranks = [_rank_actor().remote() for _ in range(3)]
            for world in (1, 2, 3):
                for workers in (0, 2):
                    counts.reset_reads()
                    got = ray.get([ranks[r].epoch.remote(world, r, workers, str(tmp_path / "cache"))
                                   for r in range(world)])  # fmt: skip
                    ids = sorted(i for rank_ids, _ in got for i in rank_ids)
                    assert ids == list(range(manifest.num_samples)), (world, workers)
                    assert all(skipped == 0 for _, skipped in got)
                    fetched = _tar_bytes(counts, "pool/")
                    print(f"world {world}, loader workers {workers}: read amplification"
                          f" {fetched / total:.4f}")  # fmt: skip
                    assert total <= fetched <= 1.05 * total, (world, workers, fetched / total)

            # ray.data reads our shard folder, told to take the tars only (docs/data.md).
            gcs = fsspec.filesystem("gs", **opts)
            rows = ray.data.read_webdataset("bucket/pool", filesystem=gcs, file_extensions=["tar"])
            assert rows.count() == manifest.num_samples

            _dedup_on_ray_equals_serial(tmp_path)

            # img2dataset-layout shards on gs://, indexed in place by Ray tasks, then trained on.
            pattern = shardwriter_set(tmp_path / "laion", count=40, per_shard=10)
            for tar in sorted((tmp_path / "laion").glob("*.tar")):
                gcs.put_file(str(tar), f"bucket/laion/{tar.name}")
            index = index_shards(IndexConfig(
                shards="gs://bucket/laion/" + Path(pattern).name, output="gs://bucket/laion-index",
                prefix="laion", label="json:label", classes=NAMES, storage_options=opts),
                progress=False)  # fmt: skip
            assert index.root == "gs://bucket/laion" and index.num_samples == 40
            assert not gcs.exists("bucket/laion/00000.idx.json")  # the shards' folder untouched
            counts.reset_reads()
            summary = _pretrain(tmp_path / "run")
            laion = sum(s.bytes for s in index.shards)
            assert summary.steps == 5 and summary.images_seen == 40
            assert (tmp_path / "run" / "final" / "model.safetensors").exists()
            assert summary.data_io["bad_shards"] == [] and summary.skipped_samples == 0
            assert laion <= _tar_bytes(counts, "laion/") <= 1.05 * laion
        finally:
            ray.shutdown()
            fsspec.get_filesystem_class("gs").clear_instance_cache()


def _pretrain(run_dir: Path) -> dict:
    from pipeline.train.driver.launch import launch

    cfg = load_config(PretrainConfig, str(ROOT / "configs/pretrain/nano.yaml"), [
        "data.train=gs://bucket/laion-index", "data.train_prefix=laion", "data.val=null",
        "data.storage_options={token: anon}", "data.resolution=32", "data.loader_workers=2",
        "train.epochs=1", "train.global_batch=8", "train.micro_batch=2", "train.eval_every=0",
        "train.checkpoint.every=100", "train.log_every=1", f"run.dir={run_dir}"])  # fmt: skip
    return launch(cfg)


def _dedup_on_ray_equals_serial(tmp: Path) -> None:
    """The dedup job on Ray (reference tasks, a pool of actors, units finishing in any order)
    gives the serial run's kept shards, manifest and audit, byte for byte."""
    demo = build_demo_data(DemoDataConfig(out=str(tmp / "demo"), classes=4, train_per_class=6,
                                          val_per_class=1, reference=16, planted=8, workers=1,
                                          parallel_ingest=False))  # fmt: skip
    runs = {}
    for parallel in (True, False):
        out = tmp / f"dedup-{parallel}"
        runs[parallel] = out
        run_dedup(DedupJobConfig(reference=str(demo / "raw" / "reference"),
                                 pool=str(demo / "raw" / "train"), out=str(out), parallel=parallel,
                                 images_per_unit=4), progress=False)  # fmt: skip
    ray_run, serial = runs[True], runs[False]
    assert (ray_run / "duplicates.jsonl").read_bytes() == (serial / "duplicates.jsonl").read_bytes()
    assert (ray_run / "duplicates.jsonl").read_text().count("\n") >= 4  # the planted copies
    kept = read_manifest(str(serial / "pool.manifest.json"))
    assert read_manifest(str(ray_run / "pool.manifest.json")).model_dump(exclude={"settings"}) == \
        kept.model_dump(exclude={"settings"})  # fmt: skip
    for rec in kept.shards:
        assert (ray_run / rec.name).read_bytes() == (serial / rec.name).read_bytes()
