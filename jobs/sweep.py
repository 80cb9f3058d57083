"""Scaling sweep: models x epoch budgets x LR multipliers, each point a pretraining run on Ray.

    python jobs/sweep.py --config configs/sweep/nano.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/sweep.py --config ... sweep.dir=gs://b/sweep \\
        sweep.mlflow_uri=http://mlflow:5000

Points run in parallel as the cluster's resources allow; each outcome is appended to
<sweep.dir>/results.csv; the sweep is a parent MLflow run with one nested run per point.
Re-running the same command skips finished points and resumes interrupted ones.
"""

from __future__ import annotations

import sys

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.sweep.config import SweepConfig


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], "configs/sweep/nano.yaml").parse_args(argv)
    cfg = load_config(SweepConfig, args.config, args.overrides)
    from pipeline.sweep.run import run_sweep  # Ray loads only for a real run

    out = run_sweep(cfg)
    print(f"sweep: {len(out.finished)} finished, {len(out.skipped)} skipped (finished before),"
          f" {len(out.failed)} failed -> {out.results}")  # fmt: skip
    print(f"next: python jobs/report.py --results {out.results} --out"
          f" {out.results.rsplit('/', 1)[0]}/report --mlflow-run-id {out.parent_run_id}"
          f" --mlflow-uri {out.tracking_uri}")  # fmt: skip
    return 1 if out.failed else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
