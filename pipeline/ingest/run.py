"""The ingest job: enumerate -> plan -> write missing shards (Ray tasks or inline) -> manifest."""

from __future__ import annotations

import logging
import os
import time
from typing import Literal

import fsspec
import numpy as np
from pydantic import Field
from tqdm import tqdm

from pipeline.config import Section
from pipeline.data.manifest import (
    Manifest,
    ShardIndex,
    ShardRecord,
    manifest_path,
    write_json_atomic,
)
from pipeline.ingest.encode import EncodeSettings
from pipeline.ingest.plan import ShardPlan, class_names, plan_shards
from pipeline.ingest.sources import Item, enumerate_items
from pipeline.ingest.writer import existing_index, index_name, write_shard
from pipeline.process import in_worker
from pipeline.storage import STORAGE_ENV

log = logging.getLogger(__name__)


class IngestConfig(Section):
    input: str = Field(
        description="image folder, .csv/.jsonl list, or tar shard pattern (fsspec URL)"
    )
    output: str = Field(description="output folder for shards and manifest (fsspec URL)")
    format: Literal["auto", "folder", "list", "shards"] = "auto"
    prefix: str = Field("data", pattern=r"^[A-Za-z0-9_.-]+$")
    shard_bytes: int = Field(256 * 2**20, ge=1024)
    max_shard_samples: int = Field(10_000, ge=1)
    max_side: int = Field(512, ge=16)
    jpeg_quality: int = Field(90, ge=1, le=100)
    parallel: bool = True
    # Items are written in a seeded random order (None: input order). Folders and lists come
    # grouped by class; shards that each sample the whole corpus are what the loader's block
    # shuffle assumes (it mixes neighbouring shards, not the corpus), as in webdataset practice.
    shuffle_seed: int | None = 0
    storage_options: dict = Field(default_factory=dict)


def _in_process_only(*urls: str) -> bool:
    """memory:// lives inside one process: Ray workers could not see it."""
    return any(url.startswith("memory://") for url in urls)


def _run_ray(todo: list[ShardPlan], args: tuple, bar: tqdm) -> list[ShardIndex]:
    import ray

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=3)(in_worker(write_shard))
    refs = [task.remote(plan, *args) for plan in todo]
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        bar.update(len(done))
    return ray.get(refs)


def ingest(cfg: IngestConfig, progress: bool = True) -> Manifest:
    """Enumerate the input, then write it as shards (see ``write_dataset``)."""
    items = enumerate_items(cfg.input, cfg.format, cfg.storage_options)
    return write_dataset(items, class_names(items), cfg, progress)


def write_dataset(
    items: list[Item], classes: list[str], cfg: IngestConfig, progress: bool = True
) -> Manifest:
    """Plan ``items`` into shards under ``cfg.output``, write the missing ones, then the manifest.
    ``classes`` fixes the label indices (dedup keeps the pool's class map for its kept shards)."""
    start = time.perf_counter()
    opts = cfg.storage_options
    class_index = {name: i for i, name in enumerate(classes)}
    settings = EncodeSettings(max_side=cfg.max_side, jpeg_quality=cfg.jpeg_quality)
    # The class map is part of every shard's fingerprint: a shifted index means new cls members.
    fingerprinted = {**vars(settings), "classes": classes}
    if cfg.shuffle_seed is not None:
        order = np.random.default_rng(cfg.shuffle_seed).permutation(len(items))
        items = [items[i] for i in order]
    plans = plan_shards(items, cfg.prefix, cfg.shard_bytes, cfg.max_shard_samples, fingerprinted)
    fs, out_dir = fsspec.core.url_to_fs(cfg.output, **opts)
    fs.makedirs(out_dir, exist_ok=True)
    done: dict[int, ShardIndex] = {}
    for plan in plans:
        if (index := existing_index(fs, out_dir, plan)) is not None:
            done[plan.number] = index
    todo = [p for p in plans if p.number not in done]
    args = (cfg.output, settings, class_index, opts)
    with tqdm(
        total=len(plans), initial=len(done), desc="ingest shards", disable=not progress
    ) as bar:
        if cfg.parallel and len(todo) > 1 and not _in_process_only(cfg.input, cfg.output):
            written = _run_ray(todo, args, bar)
        else:
            written = []
            for plan in todo:
                written.append(write_shard(plan, *args))
                bar.update(1)
    done.update({p.number: idx for p, idx in zip(todo, written, strict=True)})

    shards = [done[p.number] for p in plans]
    manifest = Manifest(
        prefix=cfg.prefix,
        classes=classes,
        shards=[
            ShardRecord(
                name=s.shard,
                index=index_name(s.shard),
                num_samples=len(s.samples),
                bytes=s.bytes,
                sha256=s.sha256,
            )
            for s in shards
        ],
        skipped=[skip for s in shards for skip in s.skipped],
        settings=cfg.model_dump(exclude={"storage_options"}),
    )
    write_json_atomic(fs, manifest_path(out_dir, cfg.prefix), manifest.model_dump())
    if progress:
        log.info(
            f"ingest: {manifest.num_samples} samples in {len(plans)} shards "
            f"({len(todo)} written, {len(done) - len(todo)} already complete), "
            f"{len(manifest.skipped)} skipped, {len(classes)} classes, "
            f"{time.perf_counter() - start:.1f}s -> {manifest_path(cfg.output, cfg.prefix)}"
        )
    return manifest
