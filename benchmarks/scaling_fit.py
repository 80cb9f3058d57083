"""Chinchilla Approach 3 on the Chinchilla data (SPEC §7): the fit, then the fit plus 1000
bootstrap resamples, and the whole report job (parametric + frontier bootstraps, plots).

    python -m benchmarks.scaling_fit            # target: fit + 1000 resamples <= 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.scaling import (
    Columns,
    ReportJobConfig,
    bootstrap_parametric,
    fit_parametric,
    read_table,
    run_report,
)

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "chinchilla_svg_extracted_data.csv"
COLUMNS = Columns(params="Model Size", loss="loss", tokens=None, flops="Training FLOP")


def run(n_boot: int = 1000) -> dict:
    table = read_table(str(DATA), COLUMNS, drop_highest_loss=5)
    start = time.perf_counter()
    fit = fit_parametric(table.params, table.data, table.loss)
    fit_s = time.perf_counter() - start
    bootstrap_parametric(table.params, table.data, table.loss, fit, n_boot=n_boot, seed=0)
    fit_and_boot_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_report(ReportJobConfig(results=str(DATA), out=out, params_col="Model Size",
                                   flops_col="Training FLOP", loss_col="loss",
                                   drop_highest_loss=5, bootstrap=n_boot))  # fmt: skip
        report_s = time.perf_counter() - start
    return {"rows": len(table), "bootstrap": n_boot, "fit_s": fit_s,
            "fit_plus_bootstrap_s": fit_and_boot_s, "report_job_s": report_s,
            "E": fit.E, "alpha": fit.alpha, "beta": fit.beta}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    r = run(parser.parse_args().bootstrap)
    print(f"{r['rows']} rows: fit {r['fit_s']:.2f} s, fit + {r['bootstrap']} resamples"
          f" {r['fit_plus_bootstrap_s']:.2f} s, whole report job {r['report_job_s']:.2f} s"
          f" (E {r['E']:.3f}, alpha {r['alpha']:.3f}, beta {r['beta']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
