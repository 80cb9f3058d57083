"""Sweep overhead per point: a point's wall time in the sweep (Ray task, Ray Train worker group,
process group, DeepSpeed engine, MLflow run, held-out evaluation, export, teardown) against the
time its optimizer steps took (`train_s`, summed inside the loop).

    python -m benchmarks.sweep_overhead         # nfnet_nano0 x {0.25, 0.5} epochs on data/demo

Uses the demo data (built first if missing: `make demo-data`) and configs/sweep/nano.yaml with
one model and two budgets, points one after another (2 workers fill the 2 cores).
"""

from __future__ import annotations

import statistics
import tempfile

from pipeline.config import load_config
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.sweep.config import SweepConfig
from pipeline.sweep.results import ResultsTable
from pipeline.sweep.run import run_sweep


def run(epochs: tuple[float, ...] = (0.25, 0.5)) -> dict:
    build_demo_data(DemoDataConfig())
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"sweep.dir={tmp}/sweep", "sweep.models=[nfnet_nano0]",
                     f"sweep.epochs=[{', '.join(map(str, epochs))}]"]  # fmt: skip
        out = run_sweep(load_config(SweepConfig, "configs/sweep/nano.yaml", overrides))
        rows = list(ResultsTable(out.results).latest().values())
    overhead = [r.wall_s - r.train_s for r in rows]
    return {
        "points": len(rows),
        "train_s": [round(r.train_s, 1) for r in rows],
        "wall_s": [round(r.wall_s, 1) for r in rows],
        "overhead_s_median": statistics.median(overhead),
        "overhead_share_median": statistics.median((r.wall_s - r.train_s) / r.wall_s for r in rows),
    }


def main() -> None:
    r = run()
    print(f"{r['points']} points: train {r['train_s']} s, wall {r['wall_s']} s; overhead per point"
          f" {r['overhead_s_median']:.1f} s median ({r['overhead_share_median']:.0%} of the wall)")  # fmt: skip


if __name__ == "__main__":
    main()
