"""Training checkpoints: DeepSpeed's sharded engine state + the trainer's stateful components.

One directory per checkpoint, written by every rank, then handed over (`WorkerContext.report`:
`registry.CheckpointRegistry`), which copies it under `<run.dir>/checkpoints/step_<N>/` and marks
it complete only once every rank's part has arrived: a failed or killed write is never resumed
from. Layout:
  deepspeed/...          DeepSpeed's model + ZeRO optimizer shards (one file per rank)
  <name>.json            a component's state, one for the run (rank 0 writes it)
  <name>_rank{r}.json    a component's state per rank (RNG)
  <name>.safetensors     a component's tensors, whole (the EMA: rank 0 gathers every slice)
The trainer's components are `train_state` (step, loader cursor, counters, MLflow run id),
`rng` and `ema`; whatever else has `state_dict` / `load_state_dict` can be added.

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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.serialization import config as serialization_config

from pipeline.data.order import Cursor
from pipeline.train.worker import reshard

DS_TAG = "deepspeed"


class Stateful(Protocol):
    """A component the checkpoint holds. `state_dict()` is called on every rank (it may be a
    collective) and gives JSON-able values, or name -> tensor (then saved as safetensors);
    `per_rank`: each rank keeps its own (else rank 0's is the run's); `required`: a checkpoint
    without it is refused."""

    per_rank: bool
    required: bool

    def state_dict(self) -> dict | None: ...
    def load_state_dict(self, state: dict) -> None: ...


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

    per_rank = False
    required = True

    def state_dict(self) -> dict:
        return {**asdict(self), "cursor": self.cursor.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, Cursor.from_state(v, self.cursor.num_samples) if k == "cursor" else v)


class RngState:
    """torch / numpy / python RNG states of this process."""

    per_rank = True
    required = False  # an elastic resume's new ranks had none

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


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


def _file(root: Path, name: str, part: Stateful, rank: int, tensors: bool) -> Path:
    if part.per_rank:
        return root / f"{name}_rank{rank}.json"
    return root / f"{name}.{'safetensors' if tensors else 'json'}"


def save(engine, states: dict[str, Stateful], directory: str, rank: int) -> None:
    """Every rank calls this (DeepSpeed's save, and a gathering state_dict, are collectives)."""
    root = Path(directory)
    engine.save_checkpoint(str(root), tag=DS_TAG)
    for name, part in states.items():
        state = part.state_dict()
        if state is None or not (part.per_rank or rank == 0):
            continue
        tensors = bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())
        path = _file(root, name, part, rank, tensors)
        if tensors:
            save_file(state, str(path))
        else:
            path.write_text(json.dumps(state))


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


def load(engine, states: dict[str, Stateful], directory: str, rank: int) -> None:
    """The engine and every component from a checkpoint written by any number of ranks."""
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
    for name, part in states.items():
        json_file = _file(root, name, part, rank, tensors=False)
        tensor_file = _file(root, name, part, rank, tensors=True)
        if json_file.exists():
            part.load_state_dict(json.loads(json_file.read_text()))
        elif tensor_file.exists():
            part.load_state_dict(load_file(str(tensor_file)))
        elif part.required:
            raise RuntimeError(f"{root} holds no {name!r} state")


class Checkpointer:
    """Saves the engine and the components every `every` steps and at the last, hands each
    checkpoint over, and restores the latest; how many are kept is the registry's (`keep`)."""

    def __init__(self, engine, states: dict[str, Stateful], every: int, steps: int, rank: int,
                 report: Callable[[int, str], None], scratch: Callable,
                 written: Callable[[int], None] = lambda step: None) -> None:  # fmt: skip
        self.engine, self.states, self.every, self.steps = engine, states, every, steps
        self.rank, self.report, self.scratch, self.written = rank, report, scratch, written
        self.saved: int | None = None  # the latest checkpoint's step in this run

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps

    def save(self, step: int) -> None:
        with self.scratch() as tmp:
            save(self.engine, self.states, tmp, self.rank)
            self.written(step)
            self.report(step, tmp)
        self.saved = step

    def restore(self, directory: str) -> None:
        load(self.engine, self.states, directory, self.rank)
