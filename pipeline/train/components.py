"""The config sections of the trainer's components: each holds one component's settings and
builds it (`build`), so the trainer's setup is one call per component. Part of the pretraining
config (`pipeline.train.config`: `tracking`, `train.schedule`, `train.optimizer`, `train.ema`,
`train.sam`, `train.checkpoint`). What a build needs beyond the config (DeepSpeed, MLflow) is
imported inside it: loading a config never imports them."""

from __future__ import annotations

import os

from pydantic import Field

from pipeline.config import Section
from pipeline.optim.schedules import WarmupCosine, scaled_lr


class TrackingSection(Section):
    """Where the run is logged: one MLflow run, kept across restarts (pipeline.train.tracking)."""

    # None: MLFLOW_TRACKING_URI, else sqlite:///<run.dir parent>/mlflow.db (local run.dir only)
    uri: str | None = None
    experiment: str = "pretrain"
    parent: str | None = None  # a parent run id (sweeps): this run is nested under it

    def build(self, run_dir: str, rank: int, run_id: str | None = None):
        """rank 0's MlflowTracker; a no-op Tracker on every other rank."""
        from pipeline.train.tracking import MlflowTracker, Tracker, default_tracking_uri

        if rank != 0:
            return Tracker()
        uri = self.uri or default_tracking_uri(run_dir)
        name = os.path.basename(run_dir.rstrip("/"))
        return MlflowTracker(uri, self.experiment, name, run_dir, run_id, self.parent)


class ScheduleSection(Section):
    """The LR (SPEC §4): peak = base_lr x global_batch / reference_batch, linear warmup from 0,
    then cosine decay to 0."""

    base_lr: float = Field(0.1, gt=0)  # per reference_batch images
    reference_batch: int = Field(256, ge=1)
    warmup_epochs: float = Field(0.0, ge=0)

    def build(self, global_batch: int, num_samples: int, steps: int) -> WarmupCosine:
        warmup = min(steps, round(self.warmup_epochs * num_samples / global_batch))
        return WarmupCosine(scaled_lr(self.base_lr, global_batch, self.reference_batch), steps,
                            warmup)  # fmt: skip


class AgcSection(Section):
    """Adaptive Gradient Clipping (SPEC §3): unit-wise, on the averaged gradient."""

    clipping: float = Field(0.01, gt=0)  # the largest gradient / weight norm ratio per unit
    eps: float = Field(1e-3, gt=0)  # lower bound on the weight norm


class OptimizerSection(Section):
    """SGD with (Nesterov) momentum, weight decay except on gains, biases and SkipInit scalars,
    and AGC: built into a DeepSpeed engine by `build`."""

    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(2e-5, ge=0)
    agc: AgcSection = Field(default_factory=AgcSection)

    def build(self, model, ds_config: dict, lr: float):
        from pipeline.train.worker.engine import build_engine  # DeepSpeed: workers only

        return build_engine(model, ds_config, lr, self)


class EmaSection(Section):
    """An exponential moving average of the weights, kept where (and partitioned as) they are."""

    decay: float | None = Field(0.9999, gt=0, lt=1)  # None: no EMA

    def build(self, engine):
        """The Ema of `engine`'s weights, or None."""
        from pipeline.train.worker.ema import Ema

        return Ema(engine, self.decay) if self.decay else None


class SamSection(Section):
    """Sharpness-Aware Minimisation (SPEC §5), a variant of the step (`worker/step.py`)."""

    rho: float = Field(0.0, ge=0)  # the radius; 0: plain SGD steps
    # Share of each micro-batch for the ascent; with SAM the logged `loss` is the loss at w on
    # that share (the descent's loss is at w + e), so below 1 it is the noisier of the two.
    ascent_fraction: float = Field(1.0, gt=0, le=1)

    @property
    def flops_factor(self) -> float:
        """Training FLOPs relative to a plain step: the ascent is one more forward+backward."""
        return 1.0 + self.ascent_fraction if self.rho else 1.0


class CheckpointSection(Section):
    """Cadence and retention of training checkpoints (`worker/checkpoint.py`)."""

    every: int = Field(100, ge=1)  # steps; and one at the end, and one on a preemption notice
    keep: int = Field(2, ge=1)  # the newest complete ones; older ones are deleted

    def build(self, engine, states: dict, steps: int, rank: int, report, scratch, on_written):
        from pipeline.train.worker.checkpoint import Checkpointer

        return Checkpointer(engine, states, self.every, steps, rank, report, scratch, on_written)
