"""Quickstart: one process, no Ray: a nano NFNet trained with the full SPEC recipe on generated
images, the loss falling within seconds. The smallest complete training step; `make demo` runs
the whole distributed chain.

    python jobs/quickstart.py [--config configs/quickstart.yaml] [key=value ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.cli import job_parser, run_job
from pipeline.config import load_config
from pipeline.train.quickstart import QuickstartCfg, StepLog, train

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], DEFAULT_CONFIG).parse_args(argv)
    cfg = load_config(QuickstartCfg, args.config, args.overrides)
    print(
        f"quickstart: {cfg.model} on generated {cfg.res}px images, {cfg.steps} steps of batch {cfg.batch}"
    )
    print(f"{'step':>5} {'loss':>7} {'lr':>7} {'agc clipped':>11}")

    def show(log: StepLog) -> None:
        if log.step % 5 == 0 or log.step == cfg.steps - 1:
            print(f"{log.step:5d} {log.loss:7.3f} {log.lr:7.4f} {log.clipped_fraction:10.1%}")

    start = time.perf_counter()
    result = train(cfg, on_step=show)
    k = min(5, len(result.steps))
    first = sum(s.loss for s in result.steps[:k]) / k
    last = sum(s.loss for s in result.steps[-k:]) / k
    print(
        f"done in {time.perf_counter() - start:.0f}s: train loss {first:.3f} -> {last:.3f} "
        f"(mean of first/last {k} steps), held-out loss {result.heldout_before:.3f} -> "
        f"{result.heldout_after:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
