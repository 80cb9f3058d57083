"""What a finished run reports (`<run.dir>/final/summary.json`): written by the trainer, read by
the launcher, the jobs, the sweep and the chain, as one typed model instead of a dict."""

from __future__ import annotations

import json

import fsspec
from pydantic import BaseModel, ConfigDict

from pipeline.storage import atomic_write


class HeldOutResult(BaseModel):
    step: int
    loss: float
    top1: float
    top5: float
    count: int


class WorkerPlace(BaseModel):
    rank: int
    node_rank: int
    local_rank: int
    host: str


class RunSummary(BaseModel):
    # Keys a newer trainer adds are ignored by an older reader, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str
    params: int
    classes: int
    steps: int
    global_batch: int
    images_seen: int
    epochs: float
    flops_per_image: float
    train_flops: float  # 6 x MACs x images (SPEC §6)
    train_seconds: float  # summed over every attempt
    device_hours: float
    final_train_loss: float | None  # None: a finished run launched again trained no step
    heldout_loss: float | None  # None: no data.val
    heldout_top1: float | None
    heldout_top5: float | None
    heldout_loss_ema: float | None
    heldout_top1_ema: float | None
    heldout_top5_ema: float | None
    resolution: int
    eval_resolution: int
    init_from: str | None
    heldout_history: list[HeldOutResult]
    skipped_samples: int
    skipped_steps: int
    peak_rss_gib: list[float]  # per worker, in rank order
    step_seconds: float
    memory_estimate_gib: float | None  # CPU runs
    workers: int
    placement: list[WorkerPlace]
    zero_stage: int
    data_io: dict
    run_dir: str
    mlflow_run_id: str | None
    deepspeed: dict  # the DeepSpeed config the engine ran with

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def write(self, run_dir: str) -> None:
        fs, path = fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/final/summary.json")
        atomic_write(fs, path, self.to_json().encode())

    @classmethod
    def read(cls, run_dir: str) -> RunSummary:
        """Raises FileNotFoundError when the run has not finished."""
        fs, path = fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/final/summary.json")
        return cls.model_validate(json.loads(fs.cat_file(path)))
