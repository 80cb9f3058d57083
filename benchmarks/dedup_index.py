"""ReferenceIndex at ImageNet scale: 1,331,167 random unit vectors of the descriptor's dimension.

    python -m benchmarks.dedup_index             # 5 crop views per reference, as the filter's
                                                 # default: ~5 min on 2 cores, ~5 GB of memory
    python -m benchmarks.dedup_index --views 0   # whole images only: ~1 min, ~1.5 GB

Reports build time, resident memory, save/load time and exact top-1 search throughput for a
batch of pool queries (and for the batch plus its mirrored copy, which is what the filter runs),
then times the whole filter on the quality benchmark's pool against the 1.33M-row tables.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
import psutil
import torch

from benchmarks.dedup_data import build
from pipeline.dedup import DedupFilter, Record, ReferenceSet, descriptor
from pipeline.dedup.features import VIEW_ANCHORS
from pipeline.dedup.index import ReferenceIndex

IMAGENET_TRAIN_VAL = 1_331_167


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def random_unit_vectors(n: int, dim: int, seed: int = 0, chunk: int = 1 << 17) -> torch.Tensor:
    """float16 (n, dim), filled in chunks so float32 never exists for all rows at once."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim, dtype=torch.float16)
    for start in range(0, n, chunk):
        x = torch.randn(min(chunk, n - start), dim, generator=gen)
        out[start : start + len(x)] = torch.nn.functional.normalize(x, dim=1).half()
    return out


def with_real_rows(index: ReferenceIndex, real: ReferenceSet) -> ReferenceSet:
    """A set over `index` whose first rows are `real`'s (whole-image and view rows, keys and
    sources), with random digests and pHashes for the synthetic rest."""
    k, n, m = len(real), len(index.keys), len(real.index)
    index.vectors[:m] = real.index.vectors
    if index.owners is not None:
        index.owners[:m] = real.index.owners
    index.keys[:k] = real.keys
    rng = np.random.default_rng(0)
    return ReferenceSet(
        sources=real.sources + index.keys[k:],
        sha256=np.concatenate([real.sha256, rng.integers(0, 256, (n - k, 32), dtype=np.uint8)]),
        phash=np.concatenate([real.phash, rng.integers(0, 2**63, n - k).astype(np.uint64)]),
        phash_ok=np.concatenate([real.phash_ok, np.ones(n - k, dtype=bool)]),
        index=index,
        undecodable=0,
        view_side=real.view_side,
    )


def _filter_throughput(index: ReferenceIndex) -> dict:
    """The whole filter on the quality benchmark's pool (seed 0) against 1.33M references.

    Its 28 real references overwrite the first rows of the synthetic index, and random digests
    and pHashes fill the rest, so every stage runs on ImageNet-sized tables.
    """
    refs, pool = build(0)
    real = ReferenceSet.build([Record(r.key, r.source, r.data) for r in refs])
    references = with_real_rows(index, real)
    records = [Record(p.key, p.source, p.data) for p in pool]
    start = time.perf_counter()
    filt = DedupFilter(references)
    filt.run(records[:8])  # builds the pHash tables (timed separately below)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    report = filt.run(records)
    filter_s = time.perf_counter() - start
    small = DedupFilter(real).run(records)
    decisions = [[(r["key"], r["match"], r["stage"]) for r in x.removed] for x in (report, small)]
    return {
        "same_as_real_references_alone": decisions[0] == decisions[1],
        "pool_images": len(records),
        "phash_tables_s": setup_s,
        "filter_s": filter_s,
        "pool_images_per_s": len(records) / filter_s,
        "counts": report.counts,
    }


def run(
    n: int = IMAGENET_TRAIN_VAL,
    dim: int = descriptor.DIM,
    queries: int = 4096,
    seed: int = 0,
    views: int = len(VIEW_ANCHORS),
) -> dict:
    rss_start = _rss_mb()
    total = n * (1 + views)  # whole image + crop views, as ReferenceSet.build(view_side > 0)
    vectors = random_unit_vectors(total, dim, seed)
    keys = [f"imagenet/{i:07d}" for i in range(n)]
    owners = torch.arange(total) % n if views else None
    start = time.perf_counter()
    index = ReferenceIndex.build(vectors, keys, owners=owners)
    build_s = time.perf_counter() - start
    del vectors  # the index holds its own float16 matrix from here on
    rss_index = _rss_mb()

    # Queries: noisy copies of known rows (so top-1 is checkable) plus unrelated vectors.
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.randint(0, total, (queries // 2,), generator=gen)
    copies = index.vectors[rows].float() + 0.02 * torch.randn(len(rows), dim, generator=gen)
    q = torch.nn.functional.normalize(
        torch.cat([copies, torch.randn(queries - len(rows), dim, generator=gen)]), dim=1
    )
    index.search(q[:64])  # warm-up: thread pool and allocator
    start = time.perf_counter()
    _, found = index.search(q, k=1)
    search_s = time.perf_counter() - start
    rss_search = _rss_mb()  # the allocator keeps the search's blocks: ~ its working memory
    expected = rows % n  # the owner of each copied vector
    recovered = float((torch.from_numpy(found[: len(rows), 0]) == expected).float().mean())

    start = time.perf_counter()
    index.search(q[: queries // 4], k=10)
    topk_s = time.perf_counter() - start

    end_to_end = _filter_throughput(index)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index.save(tmp)
        save_s = time.perf_counter() - start
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 2**20
        del index
        start = time.perf_counter()
        loaded = ReferenceIndex.load(tmp)
        load_s = time.perf_counter() - start
    _, again = loaded.search(q[:256])
    same = bool((again == found[:256]).all())
    return {
        "references": n,
        "vectors": total,
        "dim": dim,
        "threads": torch.get_num_threads(),
        "vectors_mb": total * dim * 2 / 2**20,
        "build_s": build_s,
        "rss_after_build_mb": rss_index - rss_start,
        "rss_search_extra_mb": rss_search - rss_index,
        "peak_rss_mb": _peak_rss_mb(),
        "queries": queries,
        "search_s": search_s,
        "queries_per_s": queries / search_s,
        "pool_images_per_s_with_mirror": queries / search_s / 2,
        "top10_queries_per_s": (queries // 4) / topk_s,
        "top1_recovered": recovered,
        "save_s": save_s,
        "load_s": load_s,
        "files_mb": size_mb,
        "loaded_results_identical": same,
        "filter": end_to_end,
    }


def markdown(r: dict) -> str:
    f = r["filter"]
    return "\n".join(
        [
            f"ReferenceIndex, {r['references']:,} references as {r['vectors']:,} x {r['dim']}"
            f" float16 ({r['vectors_mb']:.0f} MB), {r['threads']} threads",
            "",
            "| metric | value |",
            "|---|---|",
            f"| build (validate + store) | {r['build_s']:.2f} s |",
            f"| resident memory of the index (vectors + keys) | {r['rss_after_build_mb']:.0f} MB |",
            f"| extra resident memory while searching | {r['rss_search_extra_mb']:.0f} MB |",
            f"| peak resident memory, whole process | {r['peak_rss_mb']:.0f} MB |",
            f"| save / load (safetensors + JSON keys, {r['files_mb']:.0f} MB; load is mmap) |"
            f" {r['save_s']:.2f} s / {r['load_s']:.2f} s |",
            f"| top-1 search, batch of {r['queries']} | {r['search_s']:.1f} s ="
            f" {r['queries_per_s']:.0f} queries/s |",
            f"| pool images/s (query + mirrored query) | {r['pool_images_per_s_with_mirror']:.0f} |",
            f"| top-10 search | {r['top10_queries_per_s']:.0f} queries/s |",
            f"| planted copies found at top-1 | {r['top1_recovered']:.3f} |",
            f"| results identical after save/load | {r['loaded_results_identical']} |",
            f"| whole filter, {f['pool_images']} benchmark pool images vs 1.33M references |"
            f" {f['filter_s']:.1f} s = {f['pool_images_per_s']:.0f} images/s"
            f" (pHash tables built in {f['phash_tables_s']:.1f} s) |",
            f"| its removals | {f['counts']} |",
            f"| same removals as against the 28 real references alone |"
            f" {f['same_as_real_references_alone']} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=IMAGENET_TRAIN_VAL)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--views", type=int, default=len(VIEW_ANCHORS), help="crop views per ref")
    args = parser.parse_args()
    print(markdown(run(args.references, queries=args.queries, views=args.views)))


if __name__ == "__main__":
    main()
