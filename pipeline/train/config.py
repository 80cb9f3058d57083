"""Typed configuration of a pretraining run (configs/pretrain/*.yaml), validated before any
cluster resource is taken.

The batch solver derives whichever of micro-batch and gradient accumulation is missing from
global_batch = micro_batch x grad_accum x cluster.workers, and names the numbers when they do
not divide. Steps come from the epoch budget (fractional budgets are valid).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import ConfigError, Section
from pipeline.models import list_models
from pipeline.train import renamed
from pipeline.train.components import (
    CheckpointSection,
    EmaSection,
    OptimizerSection,
    SamSection,
    ScheduleSection,
    TrackingSection,
)


class RunSection(Section):
    dir: str = Field("runs/pretrain/nano", description="run directory: checkpoints, final/")
    seed: int = 0


class ModelSection(Section):
    name: str = "nfnet_nano0"
    num_classes: int | None = Field(None, ge=2)  # default: the training manifest's classes
    drop_rate: float | None = Field(None, ge=0, lt=1)  # None: the variant's own
    stochdepth_rate: float | None = Field(None, ge=0, lt=1)
    # NFNets: "same" is TensorFlow's SAME padding, which DeepMind's published weights need
    # (jobs/convert_weights.py); None: the variant's own (symmetric)
    padding: Literal["symmetric", "same"] | None = None

    def overrides(self) -> dict:
        """The variant's fields this section replaces (create_model's keyword arguments)."""
        pairs = (("drop_rate", self.drop_rate), ("stochdepth_rate", self.stochdepth_rate),
                 ("padding", self.padding))  # fmt: skip
        return {k: v for k, v in pairs if v is not None}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in list_models():
            raise ValueError(f"unknown model; expected one of {', '.join(list_models())}")
        return name

    @model_validator(mode="after")
    def _padding_is_an_nfnet_option(self) -> ModelSection:
        if self.padding is not None and self.name not in list_models("nfnet"):
            raise ValueError(f"model.padding is an NFNet option; {self.name} has none")
        return self


class DataSection(Section):
    train: str = Field("data/demo/shards/train", description="folder holding <prefix> shards")
    train_prefix: str = "train"
    val: str | None = "data/demo/shards/val"
    val_prefix: str = "val"
    resolution: int = Field(224, ge=8)
    eval_resolution: int | None = Field(None, ge=8)  # None: the train resolution
    min_crop_scale: float = Field(0.08, gt=0, le=1)  # Inception crop: area fraction lower bound
    # The sample order is defined over P partitions of each epoch; a worker owns P / W of them
    # and is the only one to download their shards (pipeline/data/order.py, docs/data.md).
    # P must divide train.global_batch and every worker count the run will use must divide P.
    # None: gcd(train.global_batch, 8), i.e. up to 8 workers; set it for larger clusters.
    partitions: int | None = Field(None, ge=1)
    block_shards: int = Field(4, ge=1)  # shards whose samples are shuffled together, per partition
    loader_workers: int = Field(1, ge=0)
    # Each worker's local shard cache (a fast local disk on GPU nodes). None: <tmp>/nfscale-cache.
    cache_dir: str | None = None
    # Bytes of shards a worker's cache may hold; None: two blocks of every partition it owns at
    # the largest shard's size (its current blocks and the next ones, downloading meanwhile).
    cache_bytes: int | None = Field(None, ge=1)
    prefetch_shards: int | None = Field(None, ge=0)  # downloads ahead of need; None: one block each
    val_samples: int | None = Field(None, ge=1)  # cap on held-out samples per evaluation
    expected_samples: int | None = Field(None, ge=1)  # --dry-run when the manifest is unreachable
    storage_options: dict = Field(default_factory=dict)


class CallbackSpec(Section):
    """A trainer callback (pipeline.train.worker.callbacks): `target(**args)`, built on every worker."""

    target: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _import_path(cls, target: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", target):
            raise ValueError("expected package.module:Name")
        return target


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0)
    global_batch: int = Field(4096, ge=1)
    micro_batch: int | None = Field(None, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    ema: EmaSection = Field(default_factory=EmaSection)
    sam: SamSection = Field(default_factory=SamSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    eval_every: int = Field(0, ge=0)  # steps; 0: only at the end
    log_every: int = Field(1, ge=1)
    # Steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = Field(10, ge=1)
    # auto: bf16 on GPU, fp32 on CPU. bf16 on CPU runs too (DeepSpeed's bf16 optimizer on its
    # CPU accelerator), slowly: it is how the GPU's bf16 path is tested on these machines.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    deterministic: bool = True
    # Recompute each block in backward instead of keeping its activations (and, under ZeRO-3,
    # its gathered weights): ~1/3 more compute for far less memory; results are unchanged.
    activation_checkpointing: bool = False
    sample_log: bool = False  # <run.dir>/samples/rank*.jsonl: sample ids of every step (audit)
    peak_tflops: float | None = Field(None, gt=0)  # per worker, for MFU; None: known GPUs only
    callbacks: list[CallbackSpec] = Field(default_factory=list)  # after the built-in ones


class InitSection(Section):
    """Start from another run's weights (fine-tuning): its final/ weights, or a .safetensors."""

    from_run: str | None = None  # a run directory (or URL), or a .safetensors file
    weights: Literal["ema", "live"] = (
        "ema"  # final/model_ema.safetensors or final/model.safetensors
    )
    keep_head: bool = False  # keep the classifier (same classes); default: a fresh head


class ClusterSection(Section):
    workers: int = Field(2, ge=1)
    # Elastic: after a node is lost Ray restarts on as few as this many workers (and grows back
    # to `workers` when nodes return); None: always exactly `workers`.
    min_workers: int | None = Field(None, ge=1)
    # Ray's placement of the workers: STRICT_SPREAD puts each on its own node.
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    zero_stage: Literal[0, 1, 2, 3] = 2
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(3, ge=0)
    # Restarts after a node Ray saw preempted (drained) died, counted apart from max_failures;
    # -1: no limit. A run that checkpointed on a notice restarts without counting at all.
    max_preemptions: int = Field(-1, ge=-1)
    address: str | None = None  # Ray address; None: the job's cluster, or a local instance
    # Extra environment for the training workers (e.g. NCCL_* tuning, allocator settings).
    worker_env: dict[str, str] = Field(default_factory=dict)
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class PretrainConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    init: InitSection = Field(default_factory=InitSection)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """A key of the flat layout before 2026-12 is refused with its new name (the run
        directories it wrote are migrated when read: `pipeline.train.renamed`)."""
        if isinstance(data, dict):
            renamed.refuse(data)
        return data

    @model_validator(mode="after")
    def _batch_divides(self) -> PretrainConfig:
        cl = self.cluster
        if cl.min_workers is not None and cl.min_workers > cl.workers:
            raise ValueError(f"cluster.min_workers={cl.min_workers} is above cluster.workers="
                             f"{cl.workers}; expected at most as many")  # fmt: skip
        partitions = resolved_partitions(self)
        if self.train.global_batch % partitions:
            raise ValueError(f"data.partitions={partitions} does not divide train.global_batch="
                             f"{self.train.global_batch}; expected a divisor of the global batch"
                             " (every partition gives each batch the same number of samples)")  # fmt: skip
        for n in range(cl.min_workers or cl.workers, cl.workers + 1):
            solve_batch(self.train, n)  # every world size Ray may pick; raises with the numbers
            if partitions % n:
                raise ValueError(
                    f"cluster.workers={n} does not divide data.partitions={partitions}; expected"
                    " a partition count that every worker count divides (each worker owns whole"
                    " partitions), e.g. data.partitions=" + str(_suggest_partitions(self, n))
                )
        if self.train.sam.rho and self.cluster.zero_stage == 3:
            # ZeRO-3 holds each rank's slice of the weights only; the local ascent needs them all.
            raise ValueError("train.sam.rho > 0 needs cluster.zero_stage 0, 1 or 2, not 3")
        return self


class FinetuneConfig(PretrainConfig):
    """A pretraining config that starts from a finished run: the same loop, checkpoints and
    resume, with init.from_run required (SAM, dropout and stochastic depth come from the YAML)."""

    @model_validator(mode="after")
    def _has_source(self) -> FinetuneConfig:
        if not self.init.from_run:
            raise ValueError("init.from_run is required; expected a pretraining run directory")
        if not self.data.val:
            raise ValueError("data.val is required; a fine-tune reports held-out top-1")
        res, eval_res = self.data.resolution, self.data.eval_resolution or self.data.resolution
        if eval_res <= res:
            raise ValueError(
                f"data.eval_resolution={eval_res} with data.resolution={res}; expected a higher"
                " evaluation resolution (the paper: 384 train, 480 eval)"
            )
        return self


class BatchPlanError(ValueError):
    pass


def solve_batch(train: TrainSection, workers: int) -> tuple[int, int]:
    """(micro_batch, grad_accum) with micro x accum x workers == global_batch."""
    g, m, a = train.global_batch, train.micro_batch, train.grad_accum
    if g % workers:
        raise BatchPlanError(
            f"train.global_batch={g} does not split over cluster.workers={workers};"
            " expected a multiple of the worker count"
        )
    per_worker = g // workers
    if m is not None and a is not None and m * a != per_worker:
        raise BatchPlanError(
            f"train.micro_batch={m} x train.grad_accum={a} x cluster.workers={workers} ="
            f" {m * a * workers}, expected train.global_batch={g}"
        )
    if m is not None:
        if per_worker % m:
            raise BatchPlanError(
                f"train.global_batch={g} / cluster.workers={workers} = {per_worker} per worker is"
                f" not a multiple of train.micro_batch={m}"
            )
        return m, per_worker // m
    a = a or 1
    if per_worker % a:
        raise BatchPlanError(
            f"train.global_batch={g} / cluster.workers={workers} = {per_worker} per worker is not"
            f" a multiple of train.grad_accum={a}"
        )
    return per_worker // a, a


def resolved_partitions(cfg: PretrainConfig) -> int:
    """data.partitions, or its default: gcd(global batch, 8), fixed by the recipe alone."""
    return cfg.data.partitions or math.gcd(cfg.train.global_batch, 8)


def _suggest_partitions(cfg: PretrainConfig, workers: int) -> int:
    """The smallest multiple of every allowed worker count that divides the global batch."""
    lo, hi = cfg.cluster.min_workers or cfg.cluster.workers, cfg.cluster.workers
    need = math.lcm(*range(lo, hi + 1), workers)
    return need if cfg.train.global_batch % need == 0 else cfg.train.global_batch


def total_steps(train: TrainSection, num_samples: int) -> int:
    """Optimizer steps for the epoch budget; at least one."""
    return max(1, math.ceil(train.epochs * num_samples / train.global_batch))


def resolved_precision(train: TrainSection, use_gpu: bool) -> str:
    if train.precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return train.precision


__all__ = [
    "BatchPlanError",
    "ConfigError",
    "FinetuneConfig",
    "PretrainConfig",
    "resolved_partitions",
    "resolved_precision",
    "solve_batch",
    "total_steps",
]
