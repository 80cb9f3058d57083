"""`make demo-data`: generate data/demo/ (pool with planted near-duplicates, held-out split,
reference set) and ingest it into shards. Re-running with the same settings does nothing.

    python jobs/make_demo_data.py [out=data/demo] [classes=32] [train_per_class=160] ...
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.data.demo_set import DemoDataConfig, build_demo_data


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], default_config=None).parse_args(argv)
    build_demo_data(load_config(DemoDataConfig, args.config, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
