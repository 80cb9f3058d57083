"""The dedup job on Ray: reference + pool (folders or shard patterns, any fsspec URL) -> DIR with
the kept pool as shards + manifest, and ``duplicates.jsonl`` (one audit object per removal).

    1. plan      reference and pool units (a shard each, or a run of folder files), checked
    2. index     the reference index, built by Ray tasks into --index (default DIR/reference-
                 index) or reused from there (`reference_job.py`)
    3. filter    a pool of Ray actors, each with the index memory-mapped, filters one pool unit
                 per call and writes its kept shard and audit part (`pool_unit.py`); units a
                 previous run finished are skipped; nothing in the driver grows with the pool
    4. merge     the manifest of the kept shards and duplicates.jsonl, in pool order

The serial run (parallel=false) calls the same unit function in order: both give the same kept
set and audit. Kept shards keep the pool's full class map, so class indices never shift.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Literal

import fsspec
from pydantic import Field
from tqdm import tqdm

from pipeline.config import Section, UserError
from pipeline.data.manifest import (
    Manifest,
    ShardRecord,
    manifest_path,
    read_manifest,
    write_json_atomic,
)
from pipeline.data.records import is_folder
from pipeline.dedup import ann, descriptor
from pipeline.dedup.features import DEFAULT_VIEW_SIDE
from pipeline.dedup.filter import (
    DEFAULT_EMBEDDING_THRESHOLD,
    DEFAULT_PHASH_MAX_DISTANCE,
    DedupConfig,
    DedupFilter,
)
from pipeline.dedup.pool_unit import Labels, done, filter_unit, names, unit_fingerprint
from pipeline.dedup.reference_job import ensure_index, existing, load_local
from pipeline.dedup.units import IMAGES_PER_UNIT, Unit, plan_units
from pipeline.ingest.sources import expand_shards
from pipeline.process import setup_process
from pipeline.storage import STORAGE_ENV, is_local

log = logging.getLogger(__name__)


class DedupJobConfig(Section):
    reference: str = Field(description="reference images: folder or shard pattern (fsspec URL)")
    pool: str = Field(description="pool to filter: folder or shard pattern (fsspec URL)")
    out: str = Field(description="output folder: kept shards, manifest, duplicates.jsonl")
    index: str | None = Field(
        None, description="reference index folder; None: <out>/reference-index"
    )
    threshold: float = Field(
        DEFAULT_EMBEDDING_THRESHOLD, gt=0, le=1, description="embedding cosine"
    )
    phash_max_distance: int = Field(DEFAULT_PHASH_MAX_DISTANCE, ge=0, le=63)
    view_side: float = Field(
        DEFAULT_VIEW_SIDE, ge=0, lt=1, description="side of the reference crop views; 0: none"
    )
    # auto: an IVF (faiss) once the index holds ann.MIN_VECTORS vectors, exact search below
    search: Literal["auto", "exact", "ivf"] = "auto"
    nprobe: int = Field(ann.DEFAULT_NPROBE, ge=1, description="IVF cells scanned per query")
    prefix: str = Field("pool", pattern=r"^[A-Za-z0-9_.-]+$")
    images_per_unit: int = Field(IMAGES_PER_UNIT, ge=1, description="folder inputs: files per unit")
    parallel: bool = True  # Ray tasks and actors; false: the same work inline, in order
    workers: int | None = Field(None, ge=1)  # pool actors; None: the cluster's CPUs
    storage_options: dict = Field(default_factory=dict)


@dataclass
class DedupResult:
    counts: dict[str, int]
    manifest: Manifest
    duplicates: str  # URL of duplicates.jsonl

    def summary(self) -> str:
        c = self.counts
        return (f"dedup: {c['pool']} pool images, removed {c['exact']} exact + {c['phash']} phash"
                f" + {c['embedding']} embedding, kept {c['kept']}, undecodable {c['undecodable']}")  # fmt: skip


class DedupWorker:
    """Filters pool units against the reference index it loaded (a Ray actor, or inline)."""

    def __init__(self, cfg: dict, index: str, labels: Labels) -> None:
        setup_process()  # a Ray actor's process
        self.cfg = DedupJobConfig.model_validate(cfg)
        refs = load_local(index, self.cfg.storage_options, self.cfg.search, self.cfg.nprobe)
        self.filter = DedupFilter(refs, DedupConfig(
            phash_max_distance=self.cfg.phash_max_distance,
            embedding_threshold=self.cfg.threshold, view_side=self.cfg.view_side))  # fmt: skip
        self.labels = labels

    def process(self, unit: Unit, fingerprint: str) -> dict:
        try:
            return filter_unit(unit, self.filter, self.labels, self.cfg.out, self.cfg.prefix,
                               fingerprint, self.cfg.storage_options)  # fmt: skip
        except UserError as e:  # the driver reports it once the other units are written
            return {"unit": unit.number, "error": str(e)}


def pool_labels(cfg: DedupJobConfig, units: list[Unit]) -> Labels:
    """Folders: class = top folder, all of them; shards: their manifest's class map if they are
    exactly some manifest's shards, else the integer .cls labels as they are."""
    opts = cfg.storage_options
    if is_folder(cfg.pool, opts):
        return Labels(tuple(sorted({p.split("/")[0] for u in units for p in u.paths if "/" in p})))
    fs, path = fsspec.core.url_to_fs(cfg.pool, **opts)
    shards = {posixpath.basename(u) for u in expand_shards(cfg.pool, opts)}
    for found in fs.glob(f"{posixpath.dirname(path)}/*.manifest.json"):
        manifest = read_manifest(fs.unstrip_protocol(found), opts)
        if shards <= {s.name for s in manifest.shards}:
            return Labels(tuple(manifest.classes))
    return Labels(None)


def run_dedup(cfg: DedupJobConfig, progress: bool = True) -> DedupResult:
    start = time.perf_counter()
    opts = cfg.storage_options
    ref_units = plan_units(cfg.reference, opts, cfg.images_per_unit)  # both checked up front
    pool_units = plan_units(cfg.pool, opts, cfg.images_per_unit)
    labels = pool_labels(cfg, pool_units)
    fs, out = fsspec.core.url_to_fs(cfg.out, **opts)
    fs.makedirs(f"{out}/audit", exist_ok=True)
    parallel = cfg.parallel and not any(u.startswith("memory://") for u in (cfg.reference,
                                                                           cfg.pool, cfg.out))  # fmt: skip
    index = cfg.index or f"{cfg.out.rstrip('/')}/reference-index"
    existing(index, cfg.reference, cfg.view_side, opts)  # another set's index: refused now
    if parallel:
        _init_ray()
    built = ensure_index(index, cfg.reference, ref_units, cfg.view_side, cfg.search, opts,
                         parallel, progress)  # fmt: skip
    settings = {**cfg.model_dump(exclude={"parallel", "workers", "storage_options", "index",
                                          "nprobe"}), "index": built,
                "descriptor": descriptor.VERSION}  # fmt: skip
    prints = {u.number: unit_fingerprint(u, settings) for u in pool_units}
    results = {u.number: r for u in pool_units
               if (r := done(cfg.out, cfg.prefix, u, prints[u.number], opts)) is not None}  # fmt: skip
    todo = [u for u in pool_units if u.number not in results]
    for result in _filter(cfg, index, labels, todo, prints, parallel, progress, len(results)):
        results[result["unit"]] = result
    errors = [r["error"] for r in results.values() if "error" in r]
    if errors:
        raise UserError(f"{errors[0]} ({len(errors)} of {len(pool_units)} pool units failed; the"
                        " others are written and a re-run skips them)")  # fmt: skip
    outcome = _merge(cfg, [results[u.number] for u in pool_units], pool_units, labels)
    if progress:
        log.info(f"{outcome.summary()} in {time.perf_counter() - start:.0f}s ({len(todo)} of"
                 f" {len(pool_units)} pool units filtered now) -> {cfg.out}")  # fmt: skip
    return outcome


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        env = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}
        ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False)


def _filter(cfg, index, labels, todo, prints, parallel, progress, already):
    """Each unit's result as it finishes, with a progress bar over units and images/s."""
    bar = tqdm(total=len(todo) + already, initial=already, desc="dedup", unit="shard",
               disable=not progress)  # fmt: skip
    started, images = time.perf_counter(), 0
    for result in _results(cfg, index, labels, todo, prints, parallel):
        images += result.get("counts", {}).get("pool", 0)
        bar.set_postfix(img_s=f"{images / max(time.perf_counter() - started, 1e-9):.0f}")
        bar.update(1)
        yield result
    bar.close()


def _results(cfg, index, labels, todo, prints, parallel):
    if not todo:
        return
    if not parallel:
        worker = DedupWorker(cfg.model_dump(), index, labels)
        for unit in todo:
            yield worker.process(unit, prints[unit.number])
        return
    import ray
    from ray.util import ActorPool

    count = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    actor = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(DedupWorker)
    actors = [actor.remote(cfg.model_dump(), index, labels) for _ in range(min(count, len(todo)))]
    pool = ActorPool(actors)
    yield from pool.map_unordered(lambda a, u: a.process.remote(u, prints[u.number]), todo)


def _merge(
    cfg: DedupJobConfig, results: list[dict], units: list[Unit], labels: Labels
) -> DedupResult:
    """The kept shards' manifest and duplicates.jsonl, in pool order; each written atomically."""
    opts = cfg.storage_options
    fs, out = fsspec.core.url_to_fs(cfg.out, **opts)
    counts = dict.fromkeys(("pool", "exact", "phash", "embedding", "kept", "undecodable"), 0)
    for r in results:
        for k in counts:
            counts[k] += r["counts"][k]
    top = max((r["max_label"] for r in results), default=-1)
    classes = (
        list(labels.classes) if labels.classes is not None else [str(i) for i in range(top + 1)]
    )
    manifest = Manifest(
        prefix=cfg.prefix, classes=classes,
        shards=[ShardRecord(**r["record"]) for r in results if r["record"]["num_samples"]],
        skipped=[{"shard": r["record"]["name"], "count": r["skipped"]} for r in results if r["skipped"]],
        settings=cfg.model_dump(exclude={"storage_options"}),
    )  # fmt: skip
    duplicates = f"{out}/duplicates.jsonl"
    tmp = f"{duplicates}.tmp-{os.getpid()}" if is_local(fs) else duplicates
    with fs.open(tmp, "wb") as f:  # streamed: the audit is never whole in memory
        for unit in units:
            f.write(fs.cat_file(f"{out}/{names(cfg.prefix, unit)['audit']}"))
    if tmp != duplicates:
        fs.mv(tmp, duplicates)
    write_json_atomic(fs, manifest_path(out, cfg.prefix), manifest.model_dump())
    return DedupResult(
        counts, manifest, fs.unstrip_protocol(duplicates) if "://" in cfg.out else duplicates
    )
