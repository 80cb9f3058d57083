"""`make demo`: the main job end to end on embedded defaults, on this machine.

    python jobs/demo.py [--config configs/demo.yaml] [key=value ...]

demo data -> ingest (Ray) -> dedup against the demo reference -> scaling sweep of nano NFNets
over epoch budgets (Ray Train + DeepSpeed ZeRO + AGC) -> SAM fine-tune of the best point at a
higher resolution -> scaling fits -> report. Everything lands under runs/demo/; re-running
reuses every completed stage. Ends with where the report is and how to open the MLflow UI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.chain.config import ChainConfig
from pipeline.cli import job_parser, run_job
from pipeline.config import load_config

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], DEFAULT_CONFIG).parse_args(argv)
    cfg = load_config(ChainConfig, args.config, args.overrides)
    from pipeline.chain.run import run_chain  # Ray, DeepSpeed and MLflow load for a real run

    s = run_chain(cfg)
    import ray

    if ray.is_initialized():
        ray.shutdown()  # workers' last log lines arrive now, not after the summary below
    ft = s["finetune"]
    print(f"\ndemo: done in {s['minutes']:.1f} min. Best sweep point {s['best_point']};"
          f" fine-tuned top-1 {ft['heldout_top1']:.3f} at {ft['eval_resolution']} px.")  # fmt: skip
    audit = f", dedup audit {s['duplicates']}" if s["duplicates"] else ""
    print(f"report:  {s['report']}  (results {s['results']}{audit})")
    print(f"MLflow:  .venv/bin/mlflow ui --backend-store-uri {s['mlflow_uri']} --host 127.0.0.1"
          " --port 5000   then open http://127.0.0.1:5000")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
