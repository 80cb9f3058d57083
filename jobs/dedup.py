"""Remove near-duplicates of a reference set (ImageNet train+val) from a pretraining pool.

    python jobs/dedup.py --reference SRC --pool SRC --out DIR [--index DIR] [--threshold 0.75]
    ray job submit --working-dir . -- python jobs/dedup.py --reference gs://... --pool gs://... ...

SRC is an image folder or a shard URL pattern (any fsspec URL: file, gs://, s3://). The
reference index is built once by Ray tasks into --index (default DIR/reference-index) and reused
by later runs; a pool of Ray actors filters the pool shard by shard. DIR gets one kept shard per
pool unit + a manifest, and duplicates.jsonl with one {"key", "source", "match", "score",
"stage"} object per removed image. A re-run skips the units already done. Ends with a one-line
summary of the counts.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import run_job
from pipeline.config import build_config
from pipeline.dedup.job import DedupJobConfig, run_dedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="reference folder or shard pattern")
    parser.add_argument("--pool", required=True, help="pool folder or shard pattern")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, help="embedding cosine threshold")
    parser.add_argument("--phash-max-distance", type=int, help="pHash Hamming threshold (bits)")
    parser.add_argument("--view-side", type=float, help="reference crop views' side; 0: none")
    parser.add_argument("--prefix", help="name prefix of the kept shards")
    parser.add_argument("--index", help="reference index folder: built there once, then reused")
    parser.add_argument("--search", choices=["auto", "exact", "ivf"], help="reference search")
    parser.add_argument("--nprobe", type=int, help="IVF cells scanned per query")
    parser.add_argument("--workers", type=int, help="pool actors (default: the cluster's CPUs)")
    parser.add_argument("--images-per-unit", type=int, help="folder inputs: files per unit")
    parser.add_argument("--serial", action="store_true", help="no Ray: every unit inline")
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "serial"}
    if args.serial:
        given["parallel"] = False
    run_dedup(build_config(DedupJobConfig, given))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
