"""Run a sweep: validate every point, open the parent MLflow run, then keep as many points
training on Ray as the cluster fits, recording each outcome in the results table.

Points run on lanes (`pipeline.sweep.lanes`): `max_concurrent` worker groups (default: as many
as the cluster's CPUs or GPUs hold), each training one point after another without starting
its workers again. Each point is a pretraining run of its own (run.dir, checkpoints, MLflow
run, summary). Re-running the same sweep skips finished points and resumes the others from
their checkpoints (same run directories). A failed point is recorded and does not stop the rest.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from pipeline import workdir
from pipeline.config import UserError
from pipeline.process import in_worker
from pipeline.sweep.config import SweepConfig, point_config
from pipeline.sweep.plan import Grid, LrSearch, Point
from pipeline.sweep.results import PointResult, ResultsTable
from pipeline.train.config import PretrainConfig
from pipeline.train.driver import stopped
from pipeline.train.driver.launch import absolute, init_ray, preflight, prepare
from pipeline.train.summary import RunSummary
from pipeline.train.tracking import MlflowTracker, default_tracking_uri

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    results: str
    finished: list[str]
    failed: list[str]
    skipped: list[str]
    parent_run_id: str
    tracking_uri: str


def tracking_uri(cfg: SweepConfig, sweep_dir: str) -> str:
    if cfg.sweep.mlflow_uri:
        return cfg.sweep.mlflow_uri
    try:
        return default_tracking_uri(sweep_dir, "sweep", beside=False, uri_key="sweep.mlflow_uri")
    except ValueError as e:
        raise UserError(str(e)) from None


class Sweep:
    def __init__(self, cfg: SweepConfig) -> None:
        s = cfg.sweep
        workdir.check_output("sweep.dir", s.dir)
        self.cfg, self.dir = cfg, absolute(s.dir).rstrip("/")
        self.base = cfg.base_dict()
        self.uri = tracking_uri(cfg, self.dir)
        self.table = ResultsTable(f"{self.dir}/results.csv")
        self.plan = (LrSearch(s.models, s.epochs, s.lr_multipliers[0]) if s.lr_search
                     else Grid(s.models, s.epochs, s.lr_multipliers))  # fmt: skip
        self.parent: str | None = None

    def config(self, p: Point) -> PretrainConfig:
        return point_config(self.base, f"{self.dir}/runs/{p.name}", p.model, p.epochs,
                            p.lr_multiplier, self.uri, self.parent)  # fmt: skip

    def check(self) -> PretrainConfig:
        """Every point the grid can name (LR search: at its first multiplier) validates and
        passes preflight: bad input stops the sweep before Ray starts."""
        s = self.cfg.sweep
        multipliers = s.lr_multipliers[:1] if s.lr_search else s.lr_multipliers
        configs = [preflight(self.config(Point(m, e, x)))
                   for m in s.models for e in s.epochs for x in multipliers]  # fmt: skip
        if not configs[0].data.val:
            raise UserError("pretrain.data.val is not set; a sweep needs held-out loss per point")
        self.table.rows()  # a table with the wrong columns fails now, not after a point
        return configs[0]

    def record(
        self, p: Point, status: str, summary: RunSummary | None, wall: float, error: str = ""
    ) -> PointResult:
        s = summary.model_dump() if summary else {}
        row = PointResult(
            model=p.model, params=s.get("params"), epochs=p.epochs,
            lr=self.config(p).train.schedule.base_lr, images_seen=s.get("images_seen"),
            flops=s.get("train_flops"), device_hours=s.get("device_hours"),
            heldout_loss=s.get("heldout_loss"), status=status,
            run_dir=f"{self.dir}/runs/{p.name}", mlflow_run_id=s.get("mlflow_run_id"),
            point=p.name, lr_multiplier=p.lr_multiplier, wall_s=round(wall, 2),
            train_s=s.get("train_seconds"), recorded_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            error=error[:300], heldout_top1=s.get("heldout_top1"),
        )  # fmt: skip
        self.table.append(row)
        return row


def _capacity(cfg: PretrainConfig) -> int:
    import ray

    have = ray.cluster_resources()
    cl = cfg.cluster
    if cl.use_gpu:
        return max(1, int(have.get("GPU", 0) // cl.workers))
    return max(1, int(have.get("CPU", 1) // (cl.workers * cl.cpus_per_worker)))


class _Lanes:
    """The lanes of this sweep run and the queue they take points from (Ray starts with the
    first point to run: a finished sweep needs none)."""

    def __init__(self, sweep: Sweep, first: PretrainConfig) -> None:
        import ray

        from pipeline.sweep.lanes import PointQueue, run_lane

        init_ray(first)
        self.first, self.dir = first.model_dump(mode="json"), sweep.dir
        self.limit = sweep.cfg.sweep.max_concurrent or _capacity(first)
        self.queue = PointQueue.remote()
        self.task = ray.remote(num_cpus=0, max_retries=0)(in_worker(run_lane))
        self.running: dict = {}  # ObjectRef of a lane's task -> lane name
        self.started = 0
        self.result = None  # ObjectRef of the queue's next outcome
        log.info(
            f"sweep: up to {self.limit} point(s) at once; a lane's workers stay up across points"
        )

    def put(self, p: Point, config: PretrainConfig) -> None:
        import ray

        ray.get(self.queue.put.remote(p.name, config.model_dump(mode="json")))

    def fill(self, outstanding: int) -> None:
        """As many lanes as points to run, up to the limit."""
        import ray

        while len(self.running) < min(self.limit, outstanding):
            lane = f"lane{self.started}"
            self.started += 1
            ray.get(self.queue.lane_started.remote(lane))
            ref = self.task.remote(self.first, self.queue, lane, f"{self.dir}/lanes/{lane}")
            self.running[ref] = lane

    def next_outcome(self, outstanding: int) -> dict:
        """The next of `outstanding` points' outcomes; a lane that ended first fails the point
        it had (or handed it back, preempted), and another lane takes the rest."""
        import ray

        while True:
            self.fill(outstanding)
            if self.result is None:
                self.result = self.queue.result.remote()
            (ref,), _ = ray.wait([self.result, *self.running], num_returns=1)
            if ref == self.result:
                self.result = None
                return ray.get(ref)
            lane = self.running.pop(ref)
            try:
                error = ray.get(ref)
            except Exception as e:  # the lane's task itself failed
                error = (str(e).strip().splitlines() or [repr(e)])[-1]
            ray.get(self.queue.lane_ended.remote(lane, error))

    def close(self) -> None:
        import ray

        ray.get(self.queue.close.remote())
        if self.running:
            ray.wait(list(self.running), num_returns=len(self.running), timeout=120)


def run_sweep(cfg: SweepConfig) -> SweepOutcome:
    sweep = Sweep(cfg)
    first = sweep.check()
    # No system metrics here: the driver idles, and the points' own runs sample their workers.
    tracker = MlflowTracker(sweep.uri, cfg.sweep.experiment, os.path.basename(sweep.dir),
                            sweep.dir, system_metrics=False)  # fmt: skip
    sweep.parent = tracker.run_id
    tracker.log_params({"sweep": cfg.sweep.model_dump(mode="json"), "base": cfg.base})
    outcomes = sweep.table.latest()
    lanes: _Lanes | None = None
    waiting: dict[str, Point] = {}  # handed to the lanes, no outcome yet
    done = {"finished": [], "failed": [], "skipped": []}
    log.info(f"sweep: {sweep.dir}, parent MLflow run {sweep.parent}")
    while True:
        for p in sweep.plan.ready(outcomes):
            if p.name in outcomes and outcomes[p.name].finished:
                done["skipped"].append(p.name)
                log.info(f"sweep: {p.name} finished before, skipped")
                continue
            outcomes.pop(p.name, None)  # an old failure is no outcome of this attempt
            config, summary = prepare(sweep.config(p))
            if summary is not None:  # trained before its row was written
                outcomes[p.name] = sweep.record(p, "finished", summary, 0.0)
                done["finished"].append(p.name)
                continue
            lanes = lanes or _Lanes(sweep, first)
            lanes.put(p, config)
            waiting[p.name] = p
            log.info(f"sweep: {p.name} queued")
        if not waiting:
            break
        out = lanes.next_outcome(len(waiting))
        p = waiting.pop(out["name"])
        run_dir = f"{sweep.dir}/runs/{p.name}"
        status, summary, error = out["status"], None, out["error"] or ""
        if status == "finished":
            summary = RunSummary.read(run_dir)
        elif status != "failed":  # it stopped itself (non-finite steps) or could not fit
            status, error = "failed", stopped.reason(run_dir) or f"the run ended {status}"
        outcomes[p.name] = sweep.record(p, status, summary, out["wall"], error)
        done[status].append(p.name)
        loss = (f"held-out loss {summary.heldout_loss:.4f}, top-1 {summary.heldout_top1:.3f}"
                if summary else error)  # fmt: skip
        log.info(f"sweep: {p.name} {status}: {loss}")
        if summary:
            tracker.log_metrics({f"heldout_loss/{p.name}": summary.heldout_loss}, 0)
    if lanes is not None:
        lanes.close()
    if sweep.table.fs.exists(sweep.table.root):
        tracker.log_text(sweep.table.fs.cat_file(sweep.table.root).decode(), "results.csv")
    tracker.log_text(json.dumps(done, indent=1), "outcome.json")
    tracker.close("FAILED" if done["failed"] else "FINISHED")
    return SweepOutcome(sweep.table.path, done["finished"], done["failed"], done["skipped"],
                        sweep.parent, sweep.uri)  # fmt: skip
