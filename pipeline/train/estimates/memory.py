"""Will a run fit in memory? An estimate per worker, checked before anything is allocated.

CPU training holds everything in host memory, so the driver checks a local run against this
machine before Ray starts, and every worker checks its own node (its share of the available
memory) before it builds the model: a run that would be OOM-killed mid-step is refused in one
line instead. The estimate, per worker, for P parameters and W workers:
  build    4P: every worker builds the whole fp32 model before DeepSpeed partitions it
  train    weights, gradients and optimizer state for the ZeRO stage (state_bytes), the
           communication buffers the DeepSpeed config allows, activations at the micro-batch
           (3x the leaf-module outputs: functional ops save tensors too; 1/8 of that with
           activation checkpointing), under ZeRO-3 without checkpointing the whole model's
           gathered weights (autograd keeps each convolution's weight for backward), and the
           process
  peak     the larger of the two
Memory the process maps from files (a checkpoint shard while resuming) is page cache, which the
system reclaims, so it is not counted; the peak RSS a worker reports includes it.
Measured on NFNet-F7+ with ZeRO-3 on 2 CPU workers: BENCHMARKS.md.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import torch

from pipeline.models import create_model
from pipeline.train.worker.topology import gather

GIB = 2**30
# Python, torch, DeepSpeed, the Ray worker, the data loader (and MLflow on rank 0): the peak RSS
# of a nano worker, whose model, states and activations are a few MB (0.63-0.70 GiB measured).
PROCESS_BYTES = 0.7 * GIB
# The CUDA context with cuBLAS/cuDNN workspaces: assumed until `make gpu-check` measures it.
CUDA_CONTEXT_BYTES = 1.0 * GIB
WAIT_S = 60  # a worker's check waits this long for memory a previous attempt still holds


def state_bytes(params: int, workers: int, precision: str) -> dict[int, float]:
    """Bytes per worker of weights + gradients + optimizer state, for ZeRO stages 0-3 (SGD +
    momentum, SPEC §4). bf16: weights 2P, gradients 2P, fp32 master 4P, momentum 4P; fp32: 4P
    each (DeepSpeed keeps its own fp32 master partition under ZeRO 1-3 even in fp32; stage 0
    fp32 steps the weights in place: no master). ZeRO-1 partitions master + momentum, ZeRO-2
    also gradients, ZeRO-3 also weights (/ W)."""
    w, g, opt = (2, 2, 8) if precision == "bf16" else (4, 4, 8)
    p, n = params, workers
    return {
        0: p * (w + g + (opt if precision == "bf16" else 4)),
        1: p * (w + g + opt / n),
        2: p * (w + (g + opt) / n),
        3: p * (w + g + opt) / n,
    }


def activation_bytes(model: torch.nn.Module, res: int, batch: int, bytes_per: int) -> int:
    total = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * bytes_per

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.train()
        model(torch.empty(batch, 3, res, res, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def _buffers(ds_config: dict, stage: int, params: int, workers: int) -> float:
    """Bytes of the transient buffers the config allows (fp32 worst case): communication
    buckets, gathered parameters, and the optimizer step's temporaries (SGD's weight-decay and
    Nesterov terms, and under ZeRO-3 the flattened gradient, each the size of the flat piece
    the step works on: ZeRO-3's sub-group, ZeRO 1/2's whole partition)."""
    zero = ds_config.get("zero_optimization", {})
    if stage == 3:
        piece = min(zero["sub_group_size"], params / workers)
        return 4 * (zero["reduce_bucket_size"] + zero["stage3_prefetch_bucket_size"]
                    + zero["stage3_max_live_parameters"] + 3 * piece)  # fmt: skip
    if stage in (1, 2):
        piece = params / workers
        return 4 * (zero["reduce_bucket_size"] + zero["allgather_bucket_size"] + 2 * piece)
    return 0.0


@dataclass(frozen=True)
class Estimate:
    """Bytes per worker, by kind (see the module docstring)."""

    states: float  # weights + gradients + optimizer state for the ZeRO stage
    buffers: float  # communication buckets, gathered parameters, step temporaries
    gathered_weights: float  # ZeRO-3 without recompute: every convolution's weight, for backward
    build: float  # the whole model before DeepSpeed partitions it
    process: float  # the process itself (host) or the CUDA context (GPU)
    activations_per_image: float
    micro_batch: int

    @property
    def activations(self) -> float:
        return self.activations_per_image * self.micro_batch

    @property
    def peak(self) -> float:
        train = self.states + self.buffers + self.activations + self.gathered_weights
        return max(self.build, train) + self.process

    def largest_micro_batch(self, memory: float) -> int:
        """The largest micro-batch whose peak fits in `memory` bytes (0: none does)."""
        fixed = self.states + self.buffers + self.gathered_weights + self.process
        if self.build + self.process > memory:
            return 0
        return max(0, int((memory - fixed) // self.activations_per_image))


def activation_bytes_per_image(model: torch.nn.Module, resolution: int, precision: str,
                               recompute: bool = False) -> float:  # fmt: skip
    """What one image's forward keeps for backward: 3x the leaf-module outputs (functional ops
    save tensors too), 1/8 of that with activation checkpointing (block inputs only: a rough
    share). One forward on the meta device."""
    per_image = 3 * activation_bytes(model, resolution, 1, 2 if precision == "bf16" else 4)
    return per_image / 8 if recompute else per_image


def estimate(model: torch.nn.Module, resolution: int, ds_config: dict, precision: str,
             recompute: bool = False, gpu: bool = False,
             per_image: float | None = None) -> Estimate:  # fmt: skip
    """The estimate for `model` (built on the meta device) under `ds_config`; `recompute`:
    activation checkpointing is on; `gpu`: device memory (the model arrives there in its
    training dtype, beside the CUDA context) rather than a CPU worker's host memory;
    `per_image`: `activation_bytes_per_image` when the caller has it (it costs a forward)."""
    params = sum(p.numel() for p in model.parameters())
    micro = ds_config["train_micro_batch_size_per_gpu"]
    workers = ds_config["train_batch_size"] // (micro * ds_config["gradient_accumulation_steps"])
    stage = ds_config["zero_optimization"]["stage"]
    width = 2 if precision == "bf16" else 4
    if per_image is None:
        per_image = activation_bytes_per_image(model, resolution, precision, recompute)
    return Estimate(
        states=state_bytes(params, workers, precision)[stage],
        buffers=_buffers(ds_config, stage, params, workers),
        gathered_weights=width * params if stage == 3 and not recompute else 0.0,
        build=(width if gpu else 4.0) * params,
        process=CUDA_CONTEXT_BYTES if gpu else PROCESS_BYTES,
        activations_per_image=per_image,
        micro_batch=micro,
    )


def worker_bytes(model: torch.nn.Module, resolution: int, ds_config: dict, precision: str,
                 recompute: bool = False) -> float:  # fmt: skip
    """Estimated peak host bytes per CPU worker (the preflight check's figure)."""
    return estimate(model, resolution, ds_config, precision, recompute).peak


_UNITS = {
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str) -> float:
    """'80GiB', '141 GB', '2.5TiB' -> bytes; a ValueError with the expected form otherwise."""
    number = text.strip().rstrip("BbIiKkMmGgTt ")
    unit = text.strip()[len(number) :].strip().upper() or "B"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise ValueError(f"{text!r} is not a memory size; expected e.g. 80GiB or 141GB")
    return value * _UNITS[unit]


def check_fits(need: float, workers_here: int, what: str, where: str, wait_s: float = 0) -> None:
    """Raises MemoryError with one line when `workers_here` workers of `need` bytes each would
    not fit in the memory available on this machine, still after `wait_s` seconds (a restart
    may start while the previous attempt's processes are still releasing theirs)."""
    deadline = time.monotonic() + wait_s
    import psutil  # here: the GPU check imports this module without it

    available = psutil.virtual_memory().available
    while need * workers_here > available and time.monotonic() < deadline:
        time.sleep(1)
        available = psutil.virtual_memory().available
    if need * workers_here > available:
        raise MemoryError(
            f"{what} needs about {need / GIB:.1f} GiB per worker, {need * workers_here / GIB:.1f}"
            f" GiB for the {workers_here} worker(s) on {where}, which has {available / GIB:.1f}"
            " GiB available; expected a run that fits: more workers or a higher"
            " cluster.zero_stage (ZeRO-3 splits every state), a smaller train.micro_batch or"
            " data.resolution, or machines with more memory"
        )


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_run(cfg, classes: int, workers: int, workers_here: int, where: str,
              wait_s: float = 0) -> float:  # fmt: skip
    """check_fits for a CPU run of `cfg` on `workers` workers; returns the per-worker need."""
    from pipeline.train.config import resolved_precision, solve_batch
    from pipeline.train.worker.engine import deepspeed_config

    micro, accum = solve_batch(cfg.train, workers)
    precision = resolved_precision(cfg.train, cfg.cluster.use_gpu)
    with torch.device("meta"):
        model = create_model(cfg.model.name, num_classes=classes)
    params = sum(p.numel() for p in model.parameters())
    ds = deepspeed_config(micro, accum, workers, cfg.cluster.zero_stage, precision, False, params)
    need = worker_bytes(model, cfg.data.resolution, ds, precision,
                        cfg.train.activation_checkpointing)  # fmt: skip
    what = f"{cfg.model.name} (ZeRO-{cfg.cluster.zero_stage}, {precision}, {workers} workers)"
    check_fits(need, workers_here, what, where, wait_s)
    return need


def gathered_peaks() -> list[float]:
    """Every rank's peak resident memory in GiB, in rank order (a collective)."""
    return gather(peak_rss_bytes() / GIB)


def check_worker(cfg, classes: int, world: int, local_world: int) -> float:
    """check_run on this worker's node, agreed by every rank (one all-gather): if any node is
    short, every rank raises MemoryError with that node's line (the caller stops the run, which
    Ray must not retry). Returns the per-worker estimate."""
    try:
        where = f"node {os.uname()[1]}"
        need, problem = check_run(cfg, classes, world, local_world, where, WAIT_S), ""
    except MemoryError as e:
        need, problem = 0.0, str(e)
    problem = next((p for p in gather(problem) if p), "")
    if problem:
        raise MemoryError(problem)
    return need
