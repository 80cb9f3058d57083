"""Fixed cost per sweep point: a point's wall time in the sweep against the time its optimizer
steps took (`train_s`, summed inside the loop), on a lane whose workers stay up across points,
side by side with the same point launched alone (its own Ray Train worker group: what every
point cost before lanes).

    python -m benchmarks.sweep_overhead         # nfnet_nano0 x {0.25, 0.5, 0.75} epochs, data/demo

Uses the demo data (built first if missing: `make demo-data`) and configs/sweep/nano.yaml with
one model and three budgets on one lane (2 workers fill the 2 cores).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from pipeline.config import load_config
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.sweep.config import SweepConfig
from pipeline.sweep.results import ResultsTable
from pipeline.sweep.run import run_sweep
from pipeline.train.config import PretrainConfig
from pipeline.train.driver.launch import launch


def run(epochs: tuple[float, ...] = (0.25, 0.5, 0.75)) -> dict:
    build_demo_data(DemoDataConfig())
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"sweep.dir={tmp}/sweep", "sweep.models=[nfnet_nano0]",
                     f"sweep.epochs=[{', '.join(map(str, epochs))}]", "sweep.max_concurrent=1"]  # fmt: skip
        out = run_sweep(load_config(SweepConfig, "configs/sweep/nano.yaml", overrides))
        rows = sorted(ResultsTable(out.results).latest().values(), key=lambda r: r.recorded_at)
        point = rows[1]  # run again alone: its own worker group, as each point was before lanes
        cfg = load_config(
            PretrainConfig, f"{point.run_dir}/run_config.yaml", [f"run.dir={tmp}/alone"]
        )
        start = time.perf_counter()
        alone = launch(cfg)
        alone_wall = time.perf_counter() - start
    overhead = [r.wall_s - r.train_s for r in rows]
    return {
        "points": [r.point for r in rows],
        "train_s": [round(r.train_s, 1) for r in rows],
        "wall_s": [round(r.wall_s, 1) for r in rows],
        "overhead_s": [round(x, 1) for x in overhead],
        "overhead_s_warm_lane_median": statistics.median(overhead[1:]),
        "overhead_s_mean": statistics.mean(overhead),
        "alone": {
            "point": point.point,
            "train_s": round(alone.train_seconds, 1),
            "wall_s": round(alone_wall, 1),
            "overhead_s": round(alone_wall - alone.train_seconds, 1),
        },
    }


def main() -> None:
    r = run()
    a = r["alone"]
    print(f"lane, {len(r['points'])} points one after another: train {r['train_s']} s, wall"
          f" {r['wall_s']} s, overhead {r['overhead_s']} s (the first starts the lane); on the"
          f" warm lane {r['overhead_s_warm_lane_median']:.1f} s median, {r['overhead_s_mean']:.1f} s"
          f" mean over all points")  # fmt: skip
    print(f"alone ({a['point']}, its own worker group): train {a['train_s']} s, wall {a['wall_s']} s,"
          f" overhead {a['overhead_s']} s")  # fmt: skip


if __name__ == "__main__":
    main()
