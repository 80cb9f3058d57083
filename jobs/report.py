"""Fit scaling laws to a results table and write a report folder.

    python jobs/report.py --results PATH --out DIR [--params-col NAME]
        [--tokens-col NAME | --flops-col NAME] [--loss-col NAME] [--drop-highest-loss K]
        [--bootstrap N] [--seed S] [--mlflow-run-id ID [--mlflow-uri URI]]

Defaults read our sweep table: params, heldout_loss, D = images_seen and C = flops as given.
--tokens-col: D as given, C = 6 N D. --flops-col: C as given, D = C / (6 N). DIR gets fit.json,
report.md, report.html and the PNGs they show; with --mlflow-run-id the folder is logged as that
run's artifacts. Ends with a one-line summary of the fit.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from pipeline.cli import run_job
from pipeline.config import UserError, build_config
from pipeline.scaling.job import ReportJobConfig, run_report


class _Parser(argparse.ArgumentParser):
    """Bad arguments are bad input like any other: one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="results table (CSV)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--params-col", dest="params_col", help="model size N (default params)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--tokens-col", dest="tokens_col", help="data D; compute C = 6 N D")
    data.add_argument("--flops-col", dest="flops_col", help="compute C; data D = C / (6 N)")
    parser.add_argument("--loss-col", dest="loss_col", help="held-out loss (default heldout_loss)")
    parser.add_argument("--drop-highest-loss", dest="drop_highest_loss", type=int, metavar="K")
    parser.add_argument("--bootstrap", type=int, metavar="N", help="resamples (default 200)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    parser.add_argument("--mlflow-run-id", dest="mlflow_run_id", help="log DIR to this run")
    parser.add_argument("--mlflow-uri", dest="mlflow_uri", help="tracking URI for that run")
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    doc = run_report(build_config(ReportJobConfig, given))
    p = doc["parametric"]
    if "skipped" in p:
        coef = f"parametric fit skipped ({p['skipped']})"
    else:
        coef = ", ".join(f"{k}={p[k]['value']:.4g}" for k in ("E", "A", "B", "alpha", "beta"))
    print(f"fit on {doc['table']['points_fitted']} points: {coef} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
