"""The DeepSpeed engine of one worker: ZeRO config, SGD with the decay exclusions, AGC wired
onto the averaged gradient, and the skip of updates whose loss or gradient is not finite.

`deepspeed_config` is the whole DeepSpeed JSON; infra/deepspeed/*.json are written from it for
users who launch DeepSpeed themselves. Gradient clipping by global norm stays off: AGC replaces
it (SPEC §3). fp16 is not offered: its loss scaling would hand AGC scaled gradients.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace

import torch

from pipeline.optim.agc_sharded import ClipStats, ShardedAGC
from pipeline.optim.param_groups import agc_parameters, weight_decay_groups
from pipeline.train.components import OptimizerSection
from pipeline.train.worker.fragments import engine_fragments

STAGE3_BUCKET = 50_000_000  # elements: 200 MB in fp32
BUCKET = 50_000_000  # without a model size; DeepSpeed's own 5e8 is a 2 GB fp32 buffer per rank


def deepspeed_config(
    micro_batch: int,
    grad_accum: int,
    workers: int,
    zero_stage: int,
    precision: str,
    use_gpu: bool,
    params: int | None = None,
) -> dict:
    """params (the model's size) sizes the ZeRO buckets: one bucket for models up to 5e8
    elements, so the reduce-scatter runs once per step (2.1x -> 1.6x of DDP's step on CPU for
    F0, BENCHMARKS.md), without allocating more than the model needs."""
    bucket = BUCKET if params is None else int(min(5e8, max(params, 1e6)))
    # DeepSpeed asserts buckets are a multiple of its alignment factor (2): an odd number of
    # classes gives an odd parameter count; round up to 32 elements (fp16/bf16 alignment too).
    bucket = -(-bucket // 32) * 32
    zero: dict = {"stage": zero_stage}
    if zero_stage:
        # Overlapping communication with backward pays on GPUs; on CPU/gloo it only adds threads.
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True,
                    reduce_bucket_size=bucket, allgather_bucket_size=bucket)  # fmt: skip
    if zero_stage == 3:
        # ZeRO-3 exists to fit models a rank cannot hold whole, so its transient buffers are
        # bounded too: with DeepSpeed's defaults (a 5e8-element reduce bucket, up to 1e9
        # gathered parameters kept live and kept between forward and backward, optimizer
        # sub-groups of 1e9) a rank holds the whole F7+ gathered during its step.
        zero.update(stage3_gather_16bit_weights_on_model_save=False,
                    reduce_bucket_size=min(bucket, STAGE3_BUCKET),
                    stage3_prefetch_bucket_size=min(bucket, STAGE3_BUCKET),
                    stage3_max_live_parameters=2 * STAGE3_BUCKET,
                    stage3_max_reuse_distance=2 * STAGE3_BUCKET, sub_group_size=2 * STAGE3_BUCKET)  # fmt: skip
    return {
        "train_batch_size": micro_batch * grad_accum * workers,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch SGD as the client optimizer
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,  # our own logging; DeepSpeed's would interleave
        "wall_clock_breakdown": False,
    }


class SkippableSGD(torch.optim.SGD):
    """torch SGD whose next step can be called off: DeepSpeed (any ZeRO stage, fp32 or bf16)
    hands its fp32 partitions to this client optimizer, so a step not taken here leaves the
    weights and the momentum exactly as they were, while DeepSpeed still clears the gradients
    and counts the boundary as usual."""

    skip = False

    def step(self, closure=None):
        return None if self.skip else super().step(closure)


@dataclass
class Engine:
    """A DeepSpeed engine plus the AGC that runs between its backward and step."""

    engine: object  # deepspeed.DeepSpeedEngine
    agc: ShardedAGC
    optimizer: SkippableSGD  # the client optimizer inside DeepSpeed's wrapper
    _bad_loss: torch.Tensor | None = None  # a non-finite loss since the last update (no sync)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        self.engine.backward(loss)

    def micro_step(self, loss: torch.Tensor) -> ClipStats | None:
        """Backward one micro-batch; on the accumulation boundary clip, then update."""
        self.backward(loss)
        return self.step()

    def step(self) -> ClipStats | None:
        """After a backward (SAM: after the weights are restored): on the accumulation boundary,
        AGC, then the update unless some rank's loss or the averaged gradient is not finite
        (`stats.skipped`); between boundaries DeepSpeed's step only counts micro-batches."""
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()
            return None
        stats = self.agc()  # its norm is of the averaged gradient: the same on every rank
        bad = torch.zeros((), device=self.engine.device)  # NCCL reduces on the GPU only
        if self._bad_loss is not None:
            bad = self._bad_loss.float()
        self._bad_loss = None
        if torch.distributed.is_initialized():  # one rank's NaN loss: every rank skips
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        skipped = bool(bad) or not math.isfinite(stats.grad_norm)
        self.optimizer.skip = skipped
        self.engine.step()
        self.optimizer.skip = False
        return replace(stats, skipped=skipped)


def build_engine(
    model: torch.nn.Module, ds_config: dict, lr: float, opt: OptimizerSection | None = None
) -> Engine:
    """The DeepSpeed engine of `model` with `opt`'s SGD and AGC (default: the recipe's)."""
    import deepspeed  # imported here: the config and dry-run paths never need it

    opt = opt or OptimizerSection()

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    _skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend=_backend(), auto_mpi_discovery=False)
    clip_params = agc_parameters(model)
    shapes = [p.shape for p in clip_params]  # now: ZeRO-3 replaces them with empty partitions
    optimizer = SkippableSGD(
        weight_decay_groups(model, opt.weight_decay), lr=lr, momentum=opt.momentum,
        nesterov=opt.nesterov,
    )  # fmt: skip
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    rank = torch.distributed.get_rank()
    stage = engine.zero_optimization_stage()
    agc = ShardedAGC(
        shapes,
        lambda: engine_fragments(engine, clip_params, rank),
        opt.agc.clipping,
        opt.agc.eps,
        reduce=stage in (1, 2, 3),  # stage 0: every rank already holds the whole average
    )
    return Engine(engine, agc, optimizer)


def _skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce when its communication
    starts (39 s on a fresh 2-core machine, once per machine) that only its inference path
    (`inference_all_reduce`) calls; a training step's collectives go through torch.distributed
    (gloo). Marking the op unavailable skips the build; other accelerators have no such op."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        # Filling every torch.empty with NaN (the deterministic default) costs 6x per step
        # here: DeepSpeed allocates its communication buckets fresh. Results do not depend on it.
        torch.utils.deterministic.fill_uninitialized_memory = False


def _backend() -> str:
    if torch.distributed.is_initialized():  # Ray Train set the process group up already
        return torch.distributed.get_backend()
    return "nccl" if torch.cuda.is_available() else "gloo"
