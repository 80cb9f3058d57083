"""What the trainer costs per step beyond the work: the step cycle (one `train_step` start to
the next: micro-batches, callbacks, the preemption agreement, accounting) minus the time in
forward + backward + AGC + SGD (`trainer.micro_step`), the input's normalisation, the EMA update
and the loader's `next()` (which decodes in-process with data.loader_workers=0, the nano
config's), as a share of the cycle. The nano config's step (micro-batch 16 x 2 accumulations at 48 px, log
every 10 steps), one worker and the real trainer, through `pipeline.testing.local` (no Ray:
Ray adds nothing per step), no checkpoint before the last step. Target: <= 1%.

    python -m benchmarks.trainer_overhead
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

STEPS = 24  # the first 4 are warm-up


class _Closing:
    """An iterator that closes the loader it wraps (the trainer closes its batches)."""

    def __init__(self, it, inner) -> None:
        self.it, self.inner = it, inner

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def close(self) -> None:
        self.inner.close()


def _worker(rank: int, world: int, tmp: str) -> None:
    from pipeline.config import build_config
    from pipeline.data.demo_set import DemoDataConfig, build_demo_data
    from pipeline.testing.local import local_context
    from pipeline.train.config import PretrainConfig
    from pipeline.train.worker import trainer as trainer_module
    from pipeline.train.worker.callbacks import Callback
    from pipeline.train.worker.ema import Ema

    data = build_demo_data(DemoDataConfig(out=f"{tmp}/data", classes=4, train_per_class=200,
                                          val_per_class=4, reference=4, planted=0, size=56,
                                          workers=1, parallel_ingest=False)) / "shards"  # fmt: skip
    work, loader = {"s": 0.0}, {"s": 0.0}

    def timed(fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                work["s"] += time.perf_counter() - start

        return run

    trainer_module.micro_step = timed(trainer_module.micro_step)
    trainer_module.normalize = timed(trainer_module.normalize)  # the input's own work
    Ema.update = timed(Ema.update)

    class Cycles(Callback):
        def __init__(self) -> None:
            self.rows = []  # per step: its start; work and loader time by its end

        def on_train_start(self, trainer):
            batches = trainer.batches

            def fetched():  # the loader's whole next(), not only its wait
                while True:
                    start = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        return
                    loader["s"] += time.perf_counter() - start
                    yield batch

            trainer.batches = _Closing(fetched(), batches)

        def on_step_end(self, trainer, info):
            self.rows.append((info.started, work["s"], loader["s"]))

    cycles = Cycles()
    cfg = build_config(PretrainConfig, {
        "run": {"dir": f"{tmp}/run"}, "model": {"name": "nfnet_nano0"},
        "data": {"train": f"{data}/train", "train_prefix": "train", "val": None, "resolution": 48,
                 "min_crop_scale": 0.25},
        "train": {"epochs": STEPS * 32 / 800, "global_batch": 32, "micro_batch": 16,
                  "ema": {"decay": 0.999}, "checkpoint": {"every": 1000}, "log_every": 10},
        "cluster": {"workers": 1},
    })  # fmt: skip
    trainer_module.Trainer(cfg, local_context(cfg.run.dir), callbacks=[cycles]).run()
    rows = cycles.rows
    shares, cycle_s, fetch = [], [], []
    for k in range(5, len(rows) - 1):  # step k's cycle ends where step k + 1 starts
        cycle = rows[k + 1][0] - rows[k][0]
        fetched = rows[k][2] - rows[k - 1][2]  # the loader's next() calls within step k
        overhead = cycle - (rows[k][1] - rows[k - 1][1]) - fetched
        shares.append(overhead / cycle)
        cycle_s.append(cycle)
        fetch.append(fetched / cycle)
    Path(tmp, "result.json").write_text(json.dumps({
        "steps measured": len(shares), "median step cycle (s)": statistics.median(cycle_s),
        "median trainer overhead share": statistics.median(shares),
        "mean trainer overhead share": statistics.mean(shares),
        "max trainer overhead share (a log step)": max(shares),
        "median loader share (in-process decode: data.loader_workers=0)": statistics.median(fetch),
    }))  # fmt: skip


def run() -> dict:
    from pipeline.testing.spawn import spawn

    with tempfile.TemporaryDirectory() as tmp:
        spawn(_worker, 1, tmp)
        return json.loads(Path(tmp, "result.json").read_text())


if __name__ == "__main__":
    for k, v in run().items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
