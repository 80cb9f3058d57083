"""The trainer of one worker, top to bottom (SPEC §3-4). Every rank runs the same code; rank 0
alone writes files outside checkpoints and talks to MLflow.

    setup    config -> data (global order, this rank's slice) -> model -> DeepSpeed engine + AGC,
             EMA, tracker, checkpointer, callbacks
    resume   the latest complete checkpoint: engine and components (step, loader cursor,
             counters, RNG, EMA), re-partitioned if another number of workers wrote it (a
             fine-tune first loads its pretrained weights with a fresh head; a checkpoint wins)
    train    train_step (LR from warmup+cosine, `accum` micro-batches of forward and backward,
             AGC on the averaged gradient at the boundary, SGD, EMA), then the callbacks
             (metrics, held-out evaluation, sample log, yours), then a checkpoint when due or
             on a preemption notice; a step whose loss or gradient is not finite is skipped
             (weights, momentum, EMA as they were) and too many in a row stop the run
    finish   held-out loss (live and EMA weights), consolidated safetensors, summary, MLflow
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
import torch.distributed as dist

from pipeline.data.loader import BatchPlan, micro_batch_seed
from pipeline.data.order import Cursor
from pipeline.data.transforms import normalize
from pipeline.log import EVERY_RANK
from pipeline.models import create_model
from pipeline.process import setup_process
from pipeline.train.config import (
    PretrainConfig,
    resolved_partitions,
    resolved_precision,
    solve_batch,
    total_steps,
)
from pipeline.train.driver import stopped
from pipeline.train.estimates import memory
from pipeline.train.estimates.compute import peak_tflops, train_flops_per_image
from pipeline.train.summary import RunSummary
from pipeline.train.worker import callbacks as cb
from pipeline.train.worker import context, preemption, topology
from pipeline.train.worker.checkpoint import RngState, TrainState
from pipeline.train.worker.context import WorkerContext
from pipeline.train.worker.data import HeldOut, TrainData
from pipeline.train.worker.engine import deepspeed_config, set_determinism
from pipeline.train.worker.finish import finish_run
from pipeline.train.worker.step import micro_step, seed_draws
from pipeline.train.worker.warmstart import load_weights, source_path

log = logging.getLogger(__name__)


def train_worker(config: dict) -> None:
    """Ray Train's entry point on every worker."""
    cfg = PretrainConfig.model_validate(config)
    ctx = context.from_ray(cfg.cluster.use_gpu, cfg.run.dir, cfg.train.checkpoint.keep)
    Trainer(cfg, ctx).run()


class Trainer:
    def __init__(self, cfg: PretrainConfig, ctx: WorkerContext,
                 callbacks: list[cb.Callback] = ()) -> None:  # fmt: skip
        self.cfg, self.ctx = cfg, ctx
        self.rank, self.world, self.device = ctx.rank, ctx.world, ctx.device
        setup_process(self.rank)  # storage defaults; this rank's lines shown for rank 0 only
        self.extra_callbacks = list(callbacks)

    def run(self) -> str:
        """setup, resume, train, finish; every rank runs it. Returns how it ended, the same on
        every rank: 'finished', 'stopped' (with a stop record), 'preempted' or 'unfit'."""
        if not self.setup():
            return "unfit"
        try:
            self.resume()
            self.callbacks.on_train_start(self)
            outcome = self.train()
            if outcome == "finished":
                self.finish()
            return outcome
        finally:
            self.preemption.close()
            if hasattr(self, "batches"):
                self.batches.close()  # the shard cache goes with it
            self.callbacks.on_train_end(self)

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> bool:
        """Builds every component; False (with a stop record) when the run cannot fit."""
        cfg, tc, rank = self.cfg, self.cfg.train, self.rank
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
        set_determinism(tc.deterministic)
        self.data = TrainData.open(cfg.data, cfg.run.seed, resolved_partitions(cfg))
        self.heldout = HeldOut(cfg.data) if cfg.data.val else None
        self.num_samples = self.data.num_samples
        self.classes = cfg.model.num_classes or len(self.data.store.classes)
        self.micro, self.accum = solve_batch(tc, self.world)
        self.steps = total_steps(tc, self.num_samples)
        self.schedule = tc.schedule.build(tc.global_batch, self.num_samples, self.steps)
        self.precision = resolved_precision(tc, cfg.cluster.use_gpu)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        try:  # refuse in one line what would be OOM-killed mid-step; Ray must not retry it
            self.memory_need = None if cfg.cluster.use_gpu else memory.check_worker(
                cfg, self.classes, self.world, self.ctx.local_world)  # fmt: skip
        except MemoryError as e:
            if rank == 0:
                stopped.record(cfg.run.dir, str(e), 0)
            return False
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank and attempt
        model = self.new_model().to(self.device)
        model.set_grad_checkpointing(tc.activation_checkpointing)
        self.params = sum(p.numel() for p in model.parameters())
        if cfg.init.from_run:
            source = source_path(cfg.init)
            fresh = load_weights(model, source, cfg.init.keep_head)
            self.say(f"weights from {source}; initialised afresh: {', '.join(fresh) or 'none'}")
        self.ds_config = deepspeed_config(self.micro, self.accum, self.world, cfg.cluster.zero_stage,
                                          self.precision, cfg.cluster.use_gpu, self.params)  # fmt: skip
        self.flops_per_image = (
            train_flops_per_image(cfg.model.name, self.classes, cfg.data.resolution)
            * tc.sam.flops_factor
        )
        self.peak_tflops = peak_tflops(tc.peak_tflops, cfg.cluster.use_gpu)
        self.engine = tc.optimizer.build(model, self.ds_config, self.schedule.peak)
        self.ema = tc.ema.build(self.engine.engine)
        self.state = TrainState(0, Cursor(cfg.run.seed, 0, self.num_samples))
        states = {"train_state": self.state, "rng": RngState()}
        if self.ema is not None:
            states["ema"] = self.ema
        self.checkpointer = tc.checkpoint.build(
            self.engine.engine, states, self.steps, rank, self.ctx.report, context.scratch_dir,
            lambda step: self.callbacks.on_checkpoint_written(self, step))  # fmt: skip
        builtin = [cb.SampleLog()] if tc.sample_log else []
        builtin += [cb.MetricLog(tc.log_every), cb.HeldOutEval(tc.eval_every)]
        self.callbacks = cb.Callbacks(builtin + cb.from_specs(tc.callbacks) + self.extra_callbacks)
        self.preemption = preemption.PreemptionNotice()
        return True

    def new_model(self) -> torch.nn.Module:
        cfg = self.cfg.model
        return create_model(cfg.name, num_classes=self.classes, **cfg.overrides())

    # ---- resume -----------------------------------------------------------------------------
    def resume(self) -> None:
        cfg, tc, state = self.cfg, self.cfg.train, self.state
        with self.ctx.latest() as directory:
            if directory is not None:
                self.checkpointer.restore(directory)
                self.checkpointer.saved = state.step
                was = (
                    f", written by {state.workers} workers"
                    if state.workers not in (0, self.world)
                    else ""
                )
                self.say(f"resuming from step {state.step} of {self.steps} ({state.cursor.position}"
                         f" samples{was}) on {topology.describe(self.ctx.placement)}")  # fmt: skip
        state.workers = self.world
        self.tracker = cfg.tracking.build(cfg.run.dir, self.rank, state.mlflow_run_id)
        state.mlflow_run_id = self.tracker.run_id
        nodes = topology.nodes(self.ctx.placement)
        self.tracker.log_params(cfg.model_dump(mode="json") | {"derived": dict(
            micro_batch=self.micro, grad_accum=self.accum, workers=self.world, steps=self.steps,
            warmup_steps=self.schedule.warmup, peak_lr=self.schedule.peak, precision=self.precision,
            num_samples=self.num_samples, classes=self.classes, nodes=nodes)})  # fmt: skip
        self.tracker.log_metrics({"workers": self.world, "nodes": nodes}, state.step)
        if state.step == 0:
            self.say(f"{cfg.model.name} ({self.params:,} params): {self.steps} steps of {tc.global_batch} ="
                     f" {self.world} workers x {self.accum} x {self.micro}, ZeRO-{cfg.cluster.zero_stage},"
                     f" {self.precision}; {topology.describe(self.ctx.placement)}")  # fmt: skip
        plan = BatchPlan(tc.global_batch, self.micro, self.world, self.rank)
        self.batches = self.data.micro_batches(plan, state.cursor.position, self.steps - state.step,
                                               cfg.data.loader_workers, log=self.say_all)  # fmt: skip
        self.losses: list[torch.Tensor] = []  # stays empty when a finished run is launched again

    # ---- train ------------------------------------------------------------------------------
    def train(self) -> str:
        """Steps to the end; 'finished', 'stopped' (non-finite) or 'preempted'."""
        for step in range(self.state.step, self.steps):
            info = self.train_step(step)
            self.callbacks.on_step_end(self, info)
            preempted = self.preemption.agreed(self.device, self.ctx.drain_notice)
            if self.checkpointer.due(self.state.step) or preempted:
                self.checkpointer.save(self.state.step)  # skips changed no weights
            if preempted:
                self._preempted()
                return "preempted"
            if self.state.nonfinite_streak >= self.cfg.train.max_nonfinite_steps:
                self._stop_nonfinite()
                return "stopped"
        return "finished"

    def train_step(self, step: int) -> cb.StepInfo:
        """One optimizer step (0-based `step`): `accum` micro-batches, AGC, SGD, EMA."""
        state, tc = self.state, self.cfg.train
        start = time.perf_counter()
        lr = self.schedule(step)
        self.engine.set_lr(lr)
        losses, ids, skipped, clip, waited = [], [], 0, None, 0.0
        for _ in range(self.accum):
            batch = next(self.batches)
            images = normalize(batch.images.to(self.device), self.dtype)
            images = self.callbacks.on_micro_batch(self, step, images)
            seed_draws(micro_batch_seed(self.cfg.run.seed, batch.position), self.device)
            loss, stats = micro_step(self.engine, images, batch.labels.to(self.device), tc)
            self.callbacks.after_backward(self, step)
            clip = stats or clip
            losses.append(loss)
            ids += batch.sample_ids.tolist()
            skipped += len(batch.skipped)
            waited += batch.wait_s
        if clip.skipped:  # some rank's loss or the averaged gradient was not finite
            state.skipped_steps += 1
            state.nonfinite_streak += 1
            self.say(f"step {step + 1}: non-finite loss or gradient, update skipped"
                     f" ({state.nonfinite_streak} in a row, {state.skipped_steps} in all)")  # fmt: skip
        else:
            state.nonfinite_streak = 0
            if self.ema is not None:
                self.ema.update(self.engine.engine, step)
        state.step, state.cursor.position = step + 1, state.cursor.position + tc.global_batch
        state.elapsed_s += time.perf_counter() - start
        state.skipped_samples += skipped
        self.losses = losses
        return cb.StepInfo(state.step, self.steps, lr, losses, clip, ids, waited, start)

    def evaluate(self, model=None, dtype: torch.dtype | None = None) -> dict:
        """Held-out loss/top-1/top-5 of the live weights (or `model`); {} without data.val."""
        if self.heldout is None:
            return {}
        return self.heldout.loss(model or self.engine.engine, self.rank, self.world, self.micro,
                                 self.device, dtype or self.dtype)  # fmt: skip

    def _preempted(self) -> None:
        step = self.state.step
        notice = "a node drain" if self.preemption.drained else "SIGTERM"
        self.say(f"preempted ({notice}): step {step} is checkpointed; the run goes on from it")
        if self.rank == 0:
            preemption.record(self.cfg.run.dir, step)
        self.tracker.close(status="KILLED")

    def _stop_nonfinite(self) -> None:
        """Every rank stops here together (the skip is agreed); rank 0 leaves the record."""
        state, saved = self.state, self.checkpointer.saved
        n, limit = state.nonfinite_streak, self.cfg.train.max_nonfinite_steps
        kept = "no checkpoint was written yet" if saved is None else (
            f"the latest checkpoint (step {saved}) is intact")  # fmt: skip
        reason = (f"stopped at step {state.step}: {n} steps in a row had a non-finite loss or"
                  f" gradient (train.max_nonfinite_steps={limit}); the weights are those of step"
                  f" {state.step - n} and {kept}; expected finite steps: lower train.schedule.base_lr in a"
                  " new run.dir, or check the data")  # fmt: skip
        self.say(reason)
        if self.rank == 0:
            stopped.record(self.cfg.run.dir, reason, state.step)
        self.tracker.close(status="FAILED")

    # ---- finish -----------------------------------------------------------------------------
    def finish(self) -> RunSummary:
        return finish_run(self)

    # ---- helpers ----------------------------------------------------------------------------
    def mean(self, x: torch.Tensor) -> float:
        """The mean over ranks of a scalar (a collective)."""
        x = x.detach().float().clone()
        if dist.is_initialized():
            dist.all_reduce(x)
        return x.item() / self.world

    def say(self, message: str) -> None:
        log.info(message)  # shown for rank 0 (pipeline.log)

    def say_all(self, message: str) -> None:
        log.info(message, extra=EVERY_RANK)
