"""Index existing WebDataset shards in place (no copy): per-shard .idx.json files + a manifest.

    python jobs/index.py shards='gs://b/laion/{00000..41407}.tar' output=gs://mine/laion-index \
        label=json:label classes=gs://mine/classes.txt prefix=laion
    ray job submit --working-dir . -- python jobs/index.py shards=... output=...

Then train on them: data.train=<output> data.train_prefix=<prefix>. Labels: label=cls (default),
label=json:FIELD or label=txt, names mapped by classes=[...] or a file. Re-running skips shards
already indexed. See pipeline/ingest/inplace.py for every key.
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.ingest.inplace import IndexConfig, index_shards


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_config=None).parse_args(argv)
    index_shards(load_config(IndexConfig, args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
