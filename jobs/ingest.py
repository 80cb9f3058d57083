"""Ingest images into WebDataset shards with a manifest, in parallel on Ray.

    python jobs/ingest.py input=data/raw/pool output=data/shards/pool prefix=pool
    ray job submit --working-dir . -- python jobs/ingest.py input=gs://b/raw output=gs://b/shards

Inputs: an image folder (one subfolder per class), a .csv/.jsonl list of (path, label), or tar
shards. Re-running skips complete shards. See pipeline/ingest/run.py for every key.
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.ingest.run import IngestConfig, ingest


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_config=None).parse_args(argv)
    ingest(load_config(IngestConfig, args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
