"""Hooks into the trainer: what runs beside the step (metrics, held-out evaluation, the sample
log, fault injection in tests) without editing the loop.

Every hook runs on every rank, in registration order; a hook that joins a collective must do so
on all ranks alike. Users add their own through the config, e.g.

    train:
      callbacks:
        - target: mypackage.probes:GradientHistogram   # importable on the workers
          args: {every: 50}

which the trainer builds as `GradientHistogram(every=50)` after its own callbacks.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.train.estimates.compute import mfu

if TYPE_CHECKING:
    from pipeline.train.config import CallbackSpec
    from pipeline.train.worker.engine import ClipStats
    from pipeline.train.worker.trainer import Trainer


@dataclass
class StepInfo:
    """One finished optimizer step, as every rank saw it."""

    step: int  # steps done, this one included (1-based)
    steps: int  # of the run
    lr: float
    losses: list[torch.Tensor]  # this rank's micro-batch losses
    clip: ClipStats
    sample_ids: list[int]  # this rank's samples in this step
    data_wait_s: float  # waiting on the loader
    started: float  # time.perf_counter() when the step began

    @property
    def last(self) -> bool:
        return self.step == self.steps

    @property
    def skipped(self) -> bool:
        return self.clip.skipped


class Callback:
    """Override the hooks you need; the defaults do nothing."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_micro_batch(self, trainer: Trainer, step: int, images: torch.Tensor) -> torch.Tensor:
        """The normalised images of a micro-batch of 0-based `step`, before the forward."""
        return images

    def after_backward(self, trainer: Trainer, step: int) -> None:
        """After each micro-batch's backward (mid-step until the last one)."""

    def on_step_end(self, trainer: Trainer, info: StepInfo) -> None: ...

    def on_checkpoint_written(self, trainer: Trainer, step: int) -> None:
        """This rank's part of the step's checkpoint is written, not yet handed to Ray."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Always, once: after the run finished, stopped, was preempted, or failed."""


class Callbacks(Callback):
    """Several callbacks called as one, in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    def on_train_start(self, trainer):
        for c in self.callbacks:
            c.on_train_start(trainer)

    def on_micro_batch(self, trainer, step, images):
        for c in self.callbacks:
            images = c.on_micro_batch(trainer, step, images)
        return images

    def after_backward(self, trainer, step):
        for c in self.callbacks:
            c.after_backward(trainer, step)

    def on_step_end(self, trainer, info):
        for c in self.callbacks:
            c.on_step_end(trainer, info)

    def on_checkpoint_written(self, trainer, step):
        for c in self.callbacks:
            c.on_checkpoint_written(trainer, step)

    def on_train_end(self, trainer):
        errors = []
        for c in self.callbacks:  # every one gets to close what it holds
            try:
                c.on_train_end(trainer)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


class MetricLog(Callback):
    """Loss (averaged over ranks), LR, AGC, throughput, MFU and counters every `every` steps
    and at the last one: to the tracker, and one line on rank 0."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer, info):
        if info.step % self.every and not info.last:
            return
        state, batch = trainer.state, trainer.cfg.train.global_batch
        mean_loss = trainer.mean(torch.stack(info.losses).mean())
        seconds = time.perf_counter() - info.started
        metrics = {"loss": mean_loss, "lr": info.lr, "agc_clip_fraction": info.clip.fraction,
                   "grad_norm": info.clip.grad_norm, "images_per_s": batch / seconds,
                   "epoch": state.cursor.epoch(), "skipped_samples": state.skipped_samples,
                   "data_wait_s": info.data_wait_s,
                   "skipped_steps": state.skipped_steps}  # fmt: skip
        util = mfu(trainer.flops_per_image * batch / seconds, trainer.world, trainer.peak_tflops)
        if util is not None:
            metrics["mfu"] = util
        trainer.tracker.log_metrics(metrics, info.step)
        trainer.say(f"step {info.step}/{info.steps} loss {mean_loss:.4f} lr {info.lr:.4g}"
                    f" clip {info.clip.fraction:.3f} {metrics['images_per_s']:.1f} img/s")  # fmt: skip


class HeldOutEval(Callback):
    """Held-out loss every `every` steps before the last (the finish evaluates the last)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer, info):
        if not self.every or info.step % self.every or info.last:
            return
        result = trainer.evaluate()
        trainer.state.history.append({"step": info.step, **result})
        trainer.tracker.log_metrics({"heldout_loss": result["loss"]}, info.step)


class SampleLog(Callback):
    """`<run.dir>/samples/rank<r>.jsonl`: every step's sample ids on this rank, the exactly-once
    audit trail (train.sample_log). Flushed per step: a killed worker's log ends at a step."""

    def __init__(self) -> None:
        self.file = None

    def on_train_start(self, trainer):
        from pipeline.train.worker.data import open_sample_log

        self.file = open_sample_log(trainer.cfg.run.dir, trainer.rank)

    def on_step_end(self, trainer, info):
        record = {"step": info.step - 1, "world": trainer.world, "ids": info.sample_ids}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_train_end(self, trainer):
        if self.file is not None:
            self.file.close()
            self.file = None


def resolve(target: str):
    """'package.module:Name' -> the object; raises ImportError/AttributeError as they come."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def from_specs(specs: list[CallbackSpec]) -> list[Callback]:
    return [resolve(s.target)(**s.args) for s in specs]
