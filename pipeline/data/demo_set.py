"""Build data/demo/: the embedded default dataset of every CPU config.

raw/train/<class>/*.jpg       the pretraining pool, with planted near-duplicates inside
raw/val/<class>/*.jpg         a clean held-out split of the same classes
raw/reference/<class>/*.jpg   the stand-in for ImageNet train+val (other images, same world)
planted.jsonl                 ground truth: which pool file copies which reference, and how
shards/{train,val,reference}/ WebDataset shards + manifests, written by the real ingest path
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field

from pipeline.config import Section
from pipeline.data.demo_images import (
    GENERATOR,
    TRANSFORMS,
    class_name,
    jpeg_bytes,
    near_duplicate,
    render,
)
from pipeline.data.stamp import stamp_matches
from pipeline.ingest.run import IngestConfig, ingest

log = logging.getLogger(__name__)

# Different seeds per split: no val or reference image is a pool image unless planted on purpose.
SPLIT_SEEDS = {"train": 1, "val": 2, "reference": 3}


class DemoDataConfig(Section):
    out: str = "data/demo"
    classes: int = Field(32, ge=2, le=32)
    train_per_class: int = Field(160, ge=1)
    val_per_class: int = Field(32, ge=1)
    reference: int = Field(512, ge=1)
    planted: int = Field(128, ge=0)
    size: int = Field(72, ge=16)
    seed: int = 0
    workers: int = Field(2, ge=1)
    parallel_ingest: bool = True


def _render_class(args: tuple[Path, int, int, int, int, int]) -> int:
    folder, class_index, seed, count, size, start = args
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(start, start + count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(jpeg_bytes(render(class_index, seed, i, size)))
            written += 1
    return written


def _render_split(cfg: DemoDataConfig, root: Path, split: str, per_class: list[int]) -> None:
    seed = cfg.seed * 100 + SPLIT_SEEDS[split]
    jobs = [
        (root / split / class_name(c), c, seed, n, cfg.size, 0)
        for c, n in enumerate(per_class)
        if n > 0
    ]
    with ProcessPoolExecutor(cfg.workers) as pool:
        list(pool.map(_render_class, jobs))


def _plant_duplicates(cfg: DemoDataConfig, root: Path) -> list[dict]:
    """Copies of reference images, transformed, filed into the pool under their class."""
    rng = np.random.default_rng(cfg.seed + 7)
    refs = sorted((root / "reference").glob("*/*.jpg"))
    chosen = rng.choice(len(refs), size=min(cfg.planted, len(refs)), replace=False)
    records = []
    for n, ref_index in enumerate(sorted(chosen.tolist())):
        ref = refs[ref_index]
        transform = TRANSFORMS[n % len(TRANSFORMS)]
        with Image.open(ref) as img:
            copy, quality = near_duplicate(img.convert("RGB"), transform, rng)
        dest = root / "train" / ref.parent.name / f"{cfg.train_per_class + n:05d}.jpg"
        if not dest.exists():
            dest.write_bytes(jpeg_bytes(copy, quality))
        records.append(
            {
                "pool": dest.relative_to(root / "train").as_posix(),
                "reference": ref.relative_to(root / "reference").as_posix(),
                "transform": transform,
            }
        )
    return records


def demo_data_identity(cfg: DemoDataConfig) -> dict:
    return {"config": cfg.model_dump(), "generator": GENERATOR}


def demo_data_ready(cfg: DemoDataConfig) -> bool:
    """True when cfg.out holds demo data built from this config by this generator."""
    return stamp_matches(Path(cfg.out) / "demo_data.json", demo_data_identity(cfg))


def build_demo_data(cfg: DemoDataConfig) -> Path:
    root = Path(cfg.out)
    stamp = root / "demo_data.json"
    wanted = demo_data_identity(cfg)
    if demo_data_ready(cfg):
        log.info(f"demo data: up to date in {root}")
        return root
    if stamp.exists():
        stamp.unlink()  # another config or generator: rebuild from nothing, no stale shards kept
        for old in ("raw", "shards"):
            shutil.rmtree(root / old, ignore_errors=True)
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "raw"
    _render_split(cfg, raw, "train", [cfg.train_per_class] * cfg.classes)
    _render_split(cfg, raw, "val", [cfg.val_per_class] * cfg.classes)
    ref_counts = np.bincount(np.arange(cfg.reference) % cfg.classes, minlength=cfg.classes)
    _render_split(cfg, raw, "reference", ref_counts.tolist())
    planted = _plant_duplicates(cfg, raw)
    (root / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted))
    counts = {}
    for split in ("train", "val", "reference"):
        manifest = ingest(
            IngestConfig(
                input=str(raw / split),
                output=str(root / "shards" / split),
                prefix=split,
                shard_bytes=2**20,  # ~12 pool shards: enough for block shuffling and ranks
                parallel=cfg.parallel_ingest,
            )
        )
        counts[split] = manifest.num_samples
    stamp.write_text(json.dumps({**wanted, "samples": counts}, indent=1))
    log.info(
        f"demo data: {counts['train']} pool images ({len(planted)} planted near-duplicates), "
        f"{counts['val']} held-out, {counts['reference']} reference, {cfg.classes} classes, "
        f"{time.perf_counter() - start:.0f}s -> {root}"
    )
    return root
