"""`make demo`, stage by stage; every stage reuses what an earlier run completed.

    1 demo data    generated images -> ingest into shards (Ray tasks)       data/demo/
    2 dedup        pool against the reference set: kept shards + audit      <out>/dedup/
    3 sweep        nano NFNets x epoch budgets on the kept pool (Ray Train  <out>/sweep/
                   + DeepSpeed ZeRO + AGC), results table, MLflow runs
    4 fine-tune    the best sweep point, SAM at a higher resolution          <out>/finetune/<point>/
    5 report       scaling fits and plots on the results table              <out>/report/

Every config is built and validated before the first stage runs (the data each stage reads
is checked when the stage starts); Ray starts only if a stage has work.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pipeline import workdir
from pipeline.chain.config import ChainConfig
from pipeline.config import UserError, build_config, deep_merge
from pipeline.data.demo_set import (
    DemoDataConfig,
    build_demo_data,
    demo_data_identity,
    demo_data_ready,
)
from pipeline.data.fashion_mnist import (
    FashionMnistConfig,
    build_fashion_mnist,
    fashion_mnist_identity,
    fashion_mnist_ready,
)
from pipeline.data.manifest import manifest_path
from pipeline.dedup.job import DedupJobConfig, run_dedup
from pipeline.scaling.job import ReportJobConfig, run_report
from pipeline.sweep.config import SweepConfig, read_config_yaml
from pipeline.sweep.plan import Point
from pipeline.sweep.results import PointResult, ResultsTable
from pipeline.sweep.run import Sweep, run_sweep
from pipeline.train.config import FinetuneConfig
from pipeline.train.driver.launch import init_ray, launch

log = logging.getLogger(__name__)


class Chain:
    def __init__(self, cfg: ChainConfig) -> None:
        self.cfg = cfg
        workdir.check_output("out", cfg.out)
        workdir.check_output("real.out" if cfg.real else "data.out", self.data_config.out)
        self.out = Path(cfg.out).resolve()
        self.data = Path(self.data_config.out).resolve()
        self.kept = self.out / "dedup"
        shards = self.data / "shards"
        train = (shards / "train", "train") if cfg.real else (self.kept, "pool")
        data = {"train": str(train[0]), "train_prefix": train[1],
                "val": str(shards / "val"), "val_prefix": "val"}  # fmt: skip
        sweep = deep_merge(read_config_yaml(cfg.sweep_config), cfg.sweep)
        sweep = deep_merge(sweep, {"sweep": {"dir": str(self.out / "sweep")},
                                   "pretrain": {"data": data}})  # fmt: skip
        self.sweep = build_config(SweepConfig, sweep)
        self.finetune = deep_merge(read_config_yaml(cfg.finetune_config), cfg.finetune)
        self.finetune = deep_merge(self.finetune, {"data": data})
        first = self.sweep.sweep.models[0]  # checked now with a stand-in for the best point
        self.finetune_config(PointResult(status="finished", point=first, model=first,
                                         run_dir=str(self.out)), "", "")  # fmt: skip

    @property
    def data_config(self) -> DemoDataConfig | FashionMnistConfig:
        return self.cfg.real or self.cfg.data

    def data_identity(self) -> dict:
        real = self.cfg.real
        return (
            demo_data_identity(self.cfg.data)
            if real is None
            else {"fashion_mnist": fashion_mnist_identity(real)}
        )

    def data_ready(self) -> bool:
        real = self.cfg.real
        return demo_data_ready(self.cfg.data) if real is None else fashion_mnist_ready(real)

    def build_data(self) -> None:
        if self.cfg.real is None:
            build_demo_data(self.cfg.data)
        else:
            build_fashion_mnist(self.cfg.real)

    def finetune_config(self, best: PointResult, uri: str, parent: str) -> FinetuneConfig:
        """The fine-tune of the best point, in its own directory: another best point (a changed
        sweep) is another fine-tune, never a resume of this one's checkpoints."""
        model = {"name": best.model}
        padding = self.sweep.base_dict().get("model", {}).get("padding")
        if padding is not None:  # the points' padding: the checkpoint holds no other
            model["padding"] = padding
        own = {"init": {"from_run": best.run_dir}, "model": model,
               "run": {"dir": str(self.out / "finetune" / best.point)},
               "tracking": {"uri": uri or None, "parent": parent or None}}  # fmt: skip
        return build_config(FinetuneConfig, deep_merge(self.finetune, own))


def _stage(n: int, name: str) -> float:
    log.info(f"\n=== demo {n}/5: {name} ===")
    return time.perf_counter()


def run_chain(cfg: ChainConfig) -> dict:
    chain = Chain(cfg)  # every config built (and checked) before anything runs
    sweep = Sweep(chain.sweep)
    first = chain.sweep.sweep
    started = time.perf_counter()

    source, wanted = chain.out / "chain_source.json", chain.data_identity()
    if source.exists() and json.loads(source.read_text()) != wanted:
        raise UserError(
            f"{chain.out} was built from other demo data (another data config or generator);"
            f" expected the same, or a new out= (or remove {chain.out}) to start afresh"
        )
    t = _stage(1, "fashion-mnist -> shards" if cfg.real else "demo data -> shards")
    if not chain.data_ready():  # ingest's tasks, then the training runs, share one Ray
        init_ray(sweep.config(Point(first.models[0], first.epochs[0], first.lr_multipliers[0])))
    chain.build_data()
    log.info(f"data: {time.perf_counter() - t:.0f}s")
    chain.out.mkdir(parents=True, exist_ok=True)
    source.write_text(json.dumps(wanted))  # what every later stage here was built from

    t = _stage(2, "dedup against the reference set")
    audit = chain.kept / "duplicates.jsonl"
    if cfg.real:
        audit = None
        log.info("dedup: fashion-mnist has no reference set; its train split is the pool")
    elif audit.exists() and Path(manifest_path(str(chain.kept), "pool")).exists():
        log.info(f"dedup: done before -> {audit}")
    else:
        shards = chain.data / "shards"
        run_dedup(DedupJobConfig(reference=str(shards / "reference" / "reference-*.tar"),
                                 pool=str(shards / "train" / "train-*.tar"), out=str(chain.kept)))  # fmt: skip

    t = _stage(3, f"scaling sweep: {first.models} x {first.epochs} epochs")
    outcome = run_sweep(chain.sweep)
    if outcome.failed:
        raise UserError(
            f"{len(outcome.failed)} sweep point(s) failed ({', '.join(outcome.failed)}); see the"
            f" error column of {outcome.results}, fix, and run the demo again to retry them"
        )
    latest = ResultsTable(outcome.results).latest().values()
    best = min((r for r in latest if r.finished), key=lambda r: r.heldout_loss)
    log.info(f"sweep: {time.perf_counter() - t:.0f}s; best point {best.point}"
             f" (held-out loss {best.heldout_loss:.4f})")  # fmt: skip

    _stage(4, f"SAM fine-tune of {best.point} at a higher resolution")
    ft = chain.finetune_config(best, outcome.tracking_uri, outcome.parent_run_id)
    tuned = launch(ft)  # a finished fine-tune of the same config returns at once

    _stage(5, "scaling fits and report")
    report = chain.out / "report"
    doc = run_report(ReportJobConfig(results=outcome.results, out=str(report),
                                     bootstrap=cfg.bootstrap, mlflow_run_id=outcome.parent_run_id,
                                     mlflow_uri=outcome.tracking_uri))  # fmt: skip
    summary = {
        "report": str(report / "report.html"), "results": outcome.results,
        "duplicates": str(audit) if audit else None, "best_point": best.point,
        "finetune": tuned.model_dump(include={"heldout_top1", "heldout_top5", "heldout_loss",
                                              "resolution", "eval_resolution", "run_dir"}),
        "parametric": doc["parametric"], "mlflow_uri": outcome.tracking_uri,
        "minutes": (time.perf_counter() - started) / 60,
    }  # fmt: skip
    (chain.out / "demo_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
