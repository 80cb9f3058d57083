"""Training checkpoints: DeepSpeed's sharded engine state + loader cursor + RNG states + EMA.

One directory per checkpoint, written by every rank, then handed to Ray Train
(`ray.train.report(checkpoint=...)`), which copies it under `<run.dir>/checkpoints/` and
registers it only once every rank's part has arrived: a checkpoint Ray knows is complete, and a
failed or killed write is never resumed from. Layout:
  deepspeed/...          DeepSpeed's model + ZeRO optimizer shards (one file per rank)
  train_state.json       step, loader cursor, MLflow run id, accumulated wall time (rank 0)
  rng_rank{r}.json       torch / numpy / python RNG states of rank r
  ema.safetensors        EMA weights, whole (rank 0 gathers every rank's slice)

A checkpoint written by W ranks resumes on W' ranks (ZeRO 1-3: `reshard`; stage 0 holds
the whole state anyway); rank r' restores rng_rank{r'}.json where the old run had that rank.

Loading never runs code from a checkpoint: DeepSpeed reads its files with full pickle
(`torch.load(weights_only=False)`); here torch's weights-only unpickler is forced on it, with
exactly the three plain DeepSpeed classes its ZeRO 0-3 checkpoints hold allowed.
"""

from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.serialization import config as serialization_config

from pipeline.data.order import Cursor
from pipeline.train import reshard

DS_TAG = "deepspeed"
STATE_FILE = "train_state.json"
EMA_FILE = "ema.safetensors"


@dataclass
class TrainState:
    step: int
    cursor: Cursor
    mlflow_run_id: str | None = None
    elapsed_s: float = 0.0  # training wall time summed over every attempt (device-hours)
    skipped_samples: int = 0
    skipped_steps: int = 0  # updates not applied: a non-finite loss or gradient
    nonfinite_streak: int = 0  # of those, how many in a row up to now
    workers: int = 0  # the world size that wrote it (0: not recorded)
    history: list[dict] = field(default_factory=list)  # held-out evaluations so far

    def to_json(self) -> dict:
        return {**asdict(self), "cursor": self.cursor.state_dict()}

    @classmethod
    def from_json(cls, d: dict, num_samples: int) -> TrainState:
        return cls(**{**d, "cursor": Cursor.from_state(d["cursor"], num_samples)})


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(d: dict) -> None:
    torch.set_rng_state(torch.tensor(d["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = d["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = d["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save(engine, state: TrainState, ema, directory: str, rank: int) -> None:
    """Every rank calls this (DeepSpeed's save is a collective)."""
    root = Path(directory)
    engine.save_checkpoint(str(root), tag=DS_TAG)
    (root / f"rng_rank{rank}.json").write_text(json.dumps(rng_state()))
    ema_tensors = ema.gathered(dst=0) if ema is not None else None  # a collective
    if rank == 0:
        (root / STATE_FILE).write_text(json.dumps(state.to_json()))
        if ema_tensors is not None:
            save_file(ema_tensors, str(root / EMA_FILE))


@contextmanager
def weights_only_loads():
    """Every torch.load inside is weights-only, whatever its caller asked for, and maps the
    file instead of reading it into memory: resuming a ZeRO-3 F7+ would otherwise hold each
    rank's 3.3 GB optimizer file twice (loaded, then copied into the partitions)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    load_config = serialization_config.load
    mmap, load_config.mmap = load_config.mmap, True  # file pages, copied into the partitions
    try:
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        load_config.mmap = mmap
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def load(engine, ema, directory: str, rank: int, num_samples: int) -> TrainState:
    """The engine, EMA and this rank's RNG from a checkpoint written by any number of ranks."""
    root = Path(directory)
    saved_world = reshard.saved_world_size(root / DS_TAG)
    with weights_only_loads():
        if saved_world not in (None, engine.dp_world_size):  # elastic: re-partitioned here
            reshard.load(engine, root / DS_TAG)
        else:
            path, _ = engine.load_checkpoint(
                str(root), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            if path is None:
                raise RuntimeError(f"{root} holds no DeepSpeed checkpoint under tag {DS_TAG!r}")
    state = TrainState.from_json(json.loads((root / STATE_FILE).read_text()), num_samples)
    rng = root / f"rng_rank{rank}.json"
    if rng.exists():
        set_rng_state(json.loads(rng.read_text()))
    if ema is not None and (root / EMA_FILE).exists():
        ema.load(load_file(str(root / EMA_FILE)))
    return state
