"""The pretraining loop of one Ray Train worker, top to bottom (SPEC §3-4).

    setup    config -> data (global order, this rank's slice) -> model -> DeepSpeed engine + AGC
    resume   the latest complete checkpoint Ray hands back: engine, loader cursor, RNG, EMA,
             re-partitioned if it was written by another number of workers (a fine-tune first
             loads its pretrained weights, fresh head; a checkpoint wins)
    train    per step: LR from warmup+cosine, `accum` micro-batches (forward, backward; with
             SAM the backward runs at this rank's own ascent point; dropout draws seeded by the
             micro-batch's place in the stream, not by the rank), AGC on the averaged
             gradient at the boundary, SGD step, EMA; logs, held-out, checkpoints. A step
             whose loss or gradient is not finite is skipped (weights, momentum, EMA as they
             were) and counted; too many in a row stop the run with its checkpoints intact
    finish   held-out loss (live and EMA weights), consolidated safetensors, summary, MLflow

Every rank runs the same code; rank 0 alone writes files outside checkpoints and talks to MLflow.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import fsspec
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.config import dump_config
from pipeline.data.loader import BatchPlan, micro_batch_seed
from pipeline.data.order import Cursor
from pipeline.data.transforms import normalize
from pipeline.models import create_model
from pipeline.optim.sam import ascent_count, perturbed
from pipeline.optim.schedules import scaled_lr, warmup_cosine
from pipeline.storage import atomic_write
from pipeline.train import checkpoint, memory, stopped, topology
from pipeline.train.compute import mfu, peak_tflops, sam_factor, train_flops_per_image
from pipeline.train.config import (
    PretrainConfig,
    resolved_partitions,
    resolved_precision,
    solve_batch,
    total_steps,
    warmup_steps,
)
from pipeline.train.data import HeldOut, TrainData, open_sample_log
from pipeline.train.ema import Ema
from pipeline.train.engine import build_engine, deepspeed_config, set_determinism
from pipeline.train.export import save_safetensors, write_weights
from pipeline.train.faults import Faults
from pipeline.train.tracking import MlflowTracker, Tracker, default_tracking_uri
from pipeline.train.warmstart import load_weights, source_path


@dataclass
class Run:
    """What every part of the loop needs to know about this worker's run."""

    cfg: PretrainConfig
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    micro: int
    accum: int
    steps: int
    classes: int
    params: int
    flops_per_image: float
    ds_config: dict
    placement: list[dict]  # node rank and local rank of every world rank
    memory_need: float | None  # estimated peak bytes per worker (CPU runs)


def train_worker(config: dict) -> None:
    # ---- setup ------------------------------------------------------------------------------
    cfg = PretrainConfig.model_validate(config)
    tc = cfg.train
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.cluster.use_gpu else torch.device("cpu")
    set_determinism(tc.deterministic)
    data = TrainData.open(cfg.data, cfg.run.seed, resolved_partitions(cfg))
    heldout = HeldOut(cfg.data) if cfg.data.val else None
    num_samples = data.num_samples
    classes = cfg.model.num_classes or len(data.store.classes)
    micro, accum = solve_batch(tc, world)
    plan = BatchPlan(tc.global_batch, micro, world, rank)
    steps = total_steps(tc, num_samples)
    warm = warmup_steps(tc, num_samples, steps)
    peak_lr = scaled_lr(tc.base_lr, tc.global_batch, tc.reference_batch)
    precision = resolved_precision(tc, cfg.cluster.use_gpu)

    try:  # refuse in one line what would be OOM-killed mid-step; Ray must not retry it
        need = None if cfg.cluster.use_gpu else memory.check_worker(
            cfg, classes, world, ctx.get_local_world_size())  # fmt: skip
    except MemoryError as e:
        if rank == 0:
            stopped.record(cfg.run.dir, str(e), 0)
        return
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank and every attempt
    model = create_model(cfg.model.name, num_classes=classes, **_model_overrides(cfg)).to(device)
    model.set_grad_checkpointing(tc.activation_checkpointing)
    params = sum(p.numel() for p in model.parameters())
    if cfg.init.from_run:
        source = source_path(cfg.init)
        fresh = load_weights(model, source, cfg.init.keep_head)
        _say(rank, f"weights from {source}; initialised afresh: {', '.join(fresh) or 'none'}")
    ds_config = deepspeed_config(micro, accum, world, cfg.cluster.zero_stage, precision,
                                 cfg.cluster.use_gpu, params)  # fmt: skip
    run = Run(cfg, rank, world, device, torch.bfloat16 if precision == "bf16" else torch.float32,
              micro, accum, steps, classes, params,
              train_flops_per_image(cfg.model.name, classes, cfg.data.resolution)
              * sam_factor(tc.sam_rho, tc.sam_ascent_fraction), ds_config,
              topology.placement(ctx), need)  # fmt: skip
    engine = build_engine(model, ds_config, peak_lr, tc.momentum, tc.nesterov, tc.weight_decay,
                          tc.agc_clipping, tc.agc_eps)  # fmt: skip
    ema = Ema(engine.engine, tc.ema_decay) if tc.ema_decay else None
    peak = peak_tflops(tc.peak_tflops, cfg.cluster.use_gpu)

    # ---- resume -----------------------------------------------------------------------------
    state = checkpoint.TrainState(0, Cursor(cfg.run.seed, 0, num_samples))
    latest = ray.train.get_checkpoint()
    if latest is not None:
        with latest.as_directory() as d:
            state = checkpoint.load(engine.engine, ema, d, rank, num_samples)
        was = f", written by {state.workers} workers" if state.workers not in (0, world) else ""
        _say(rank, f"resuming from step {state.step} of {steps} ({state.cursor.position} samples"
                   f"{was}) on {topology.describe(run.placement)}")  # fmt: skip
    state.workers = world
    tracker = _tracker(cfg, rank, state)
    state.mlflow_run_id = tracker.run_id
    tracker.log_params(cfg.model_dump(mode="json") | {"derived": dict(
        micro_batch=micro, grad_accum=accum, workers=world, steps=steps, warmup_steps=warm,
        peak_lr=peak_lr, precision=precision, num_samples=num_samples, classes=classes,
        nodes=topology.nodes(run.placement))})  # fmt: skip
    tracker.log_metrics({"workers": world, "nodes": topology.nodes(run.placement)}, state.step)
    if state.step == 0:
        _say(rank, f"{cfg.model.name} ({run.params:,} params): {steps} steps of {tc.global_batch} = {world} workers x"
                   f" {accum} x {micro}, ZeRO-{cfg.cluster.zero_stage}, {precision}; {topology.describe(run.placement)}")  # fmt: skip

    # ---- train ------------------------------------------------------------------------------
    batches = data.micro_batches(plan, state.cursor.position, steps - state.step,
                                 cfg.data.loader_workers, log=lambda m: print(m, flush=True))  # fmt: skip
    sample_log = open_sample_log(cfg.run.dir, rank) if tc.sample_log else None
    faults = Faults.from_env(rank, world, cfg.run.dir)  # none unless a chaos test sets them
    saved = state.step if latest is not None else None  # the latest checkpoint's step
    losses: list[torch.Tensor] = []  # stays empty when a finished run is launched again
    for step in range(state.step, steps):
        start = time.perf_counter()
        lr = peak_lr * warmup_cosine(step, steps, warm)
        engine.set_lr(lr)
        losses, ids, skipped, clip, waited = [], [], 0, None, 0.0
        for _ in range(accum):
            batch = next(batches)
            images = faults.poison(normalize(batch["images"].to(device), run.dtype), step)
            torch.manual_seed(micro_batch_seed(cfg.run.seed, batch["position"]))  # dropout draws
            loss, stats = _micro_step(engine, images, batch["labels"].to(device), tc)
            faults.kill("step", step)
            clip = stats or clip
            losses.append(loss)
            ids += batch["sample_ids"].tolist()
            skipped += len(batch["skipped"])
            waited += batch["wait_s"]
        if clip.skipped:  # some rank's loss or the averaged gradient was not finite
            state.skipped_steps += 1
            state.nonfinite_streak += 1
            _say(rank, f"step {step + 1}: non-finite loss or gradient, update skipped"
                       f" ({state.nonfinite_streak} in a row, {state.skipped_steps} in all)")  # fmt: skip
        else:
            state.nonfinite_streak = 0
            if ema is not None:
                ema.update(engine.engine, step)
        state.step, state.cursor.position = step + 1, state.cursor.position + tc.global_batch
        state.elapsed_s += time.perf_counter() - start
        state.skipped_samples += skipped
        if sample_log is not None:
            sample_log.write(json.dumps({"step": step, "world": world, "ids": ids}) + "\n")
            sample_log.flush()

        if state.step % tc.log_every == 0 or state.step == steps:
            mean_loss = _mean(torch.stack(losses).mean(), world)
            seconds = time.perf_counter() - start
            metrics = {"loss": mean_loss, "lr": lr, "agc_clip_fraction": clip.fraction,
                       "grad_norm": clip.grad_norm, "images_per_s": tc.global_batch / seconds,
                       "epoch": state.cursor.epoch(), "skipped_samples": state.skipped_samples,
                       "data_wait_s": waited,
                       "skipped_steps": state.skipped_steps}  # fmt: skip
            util = mfu(run.flops_per_image * tc.global_batch / seconds, world, peak)
            if util is not None:
                metrics["mfu"] = util
            tracker.log_metrics(metrics, state.step)
            _say(rank, f"step {state.step}/{steps} loss {mean_loss:.4f} lr {lr:.4g}"
                       f" clip {clip.fraction:.3f} {metrics['images_per_s']:.1f} img/s")  # fmt: skip
        evaluate_now = tc.eval_every and state.step % tc.eval_every == 0 and state.step < steps
        if heldout is not None and evaluate_now:
            result = heldout.loss(engine.engine, rank, world, micro, device, run.dtype)
            state.history.append({"step": state.step, **result})
            tracker.log_metrics({"heldout_loss": result["loss"]}, state.step)
        if state.step % tc.checkpoint_every == 0 or state.step == steps:
            _checkpoint(engine.engine, state, ema, rank, faults)  # skips changed no weights
            saved = state.step
        if state.nonfinite_streak >= tc.max_nonfinite_steps:
            _stop_nonfinite(cfg, rank, state, saved)
            tracker.close(status="FAILED")
            batches.close()
            if sample_log is not None:
                sample_log.close()
            return

    # ---- finish -----------------------------------------------------------------------------
    batches.close()  # the shard cache goes with it
    if sample_log is not None:
        sample_log.close()
    summary = _finish(run, engine.engine, ema, heldout, state, losses, data.io_summary())
    tracker.log_metrics({k: v for k, v in summary.items() if k.startswith("heldout_")
                         and isinstance(v, float)}, state.step)  # fmt: skip
    tracker.log_metrics({k: summary[k] for k in ("train_flops", "device_hours")}, state.step)
    tracker.log_text(json.dumps(summary, indent=1), "summary.json")
    tracker.log_text(dump_config(cfg), "config.yaml")
    tracker.close()


def _finish(run: Run, engine, ema, heldout, state, losses, data_io: dict) -> dict:
    cfg, rank, world = run.cfg, run.rank, run.world

    def evaluate(model, dtype) -> dict:
        return heldout.loss(model, rank, world, run.micro, run.device, dtype) if heldout else {}

    evaluation = evaluate(engine, run.dtype)
    fs, root = fsspec.core.url_to_fs(f"{cfg.run.dir.rstrip('/')}/final")
    if rank == 0:
        fs.makedirs(root, exist_ok=True)
    meta = {"model": cfg.model.name, "classes": str(run.classes), "step": str(state.step)}
    # A collective (every rank); rank 0 streams the weights to the file, one parameter at a time.
    buffers = write_weights(engine, fs, f"{root}/model.safetensors", meta, write=rank == 0)
    ema_eval = {}
    if ema is not None:
        plain = create_model(cfg.model.name, num_classes=run.classes, **_model_overrides(cfg))
        averaged = {**ema.gathered(), **buffers}  # a collective: every rank evaluates
        plain.load_state_dict(averaged)
        ema_eval = evaluate(plain.to(run.device), torch.float32)
    images = state.step * cfg.train.global_batch
    summary = {
        "model": cfg.model.name, "params": run.params, "classes": run.classes,
        "steps": run.steps, "global_batch": cfg.train.global_batch, "images_seen": images,
        "epochs": images / state.cursor.num_samples, "flops_per_image": run.flops_per_image,
        "train_flops": run.flops_per_image * images, "train_seconds": state.elapsed_s,
        "device_hours": state.elapsed_s * world / 3600,
        "final_train_loss": _mean(torch.stack(losses).mean(), world) if losses else None,
        "heldout_loss": evaluation.get("loss"), "heldout_top1": evaluation.get("top1"),
        "heldout_top5": evaluation.get("top5"), "heldout_loss_ema": ema_eval.get("loss"),
        "heldout_top1_ema": ema_eval.get("top1"), "heldout_top5_ema": ema_eval.get("top5"),
        "resolution": cfg.data.resolution,
        "eval_resolution": cfg.data.eval_resolution or cfg.data.resolution,
        "init_from": source_path(cfg.init) if cfg.init.from_run else None,
        "heldout_history": state.history, "skipped_samples": state.skipped_samples,
        "skipped_steps": state.skipped_steps,
        "peak_rss_gib": memory.gathered_peaks(), "step_seconds": state.elapsed_s / run.steps,
        "memory_estimate_gib": run.memory_need / memory.GIB if run.memory_need else None,
        "workers": world, "placement": run.placement, "zero_stage": cfg.cluster.zero_stage,
        "data_io": data_io,
        "run_dir": cfg.run.dir,
        "mlflow_run_id": state.mlflow_run_id, "deepspeed": run.ds_config,
    }  # fmt: skip
    if rank == 0:
        if ema is not None:
            save_safetensors(fs, f"{root}/model_ema.safetensors", averaged, meta)
        atomic_write(fs, f"{root}/config.yaml", dump_config(cfg).encode())
        atomic_write(fs, f"{root}/summary.json", json.dumps(summary, indent=1).encode())
        _say(rank, f"done: held-out loss {summary['heldout_loss']}, {images} images,"
                   f" {summary['train_flops']:.3g} FLOPs -> {cfg.run.dir}/final")  # fmt: skip
    return summary


def _micro_step(engine, images: torch.Tensor, labels: torch.Tensor, tc) -> tuple:
    """Forward and backward of one micro-batch (update on the accumulation boundary); returns
    the loss at the current weights and the AGC stats of an update. With SAM (SPEC §5) the
    backward runs at w + e, e from this rank's own gradient on the first ascent_fraction."""

    def loss_of(model, x, y):
        return F.cross_entropy(model(x).float(), y, label_smoothing=tc.label_smoothing)

    if not tc.sam_rho:
        loss = loss_of(engine.engine, images, labels)
        return loss.detach(), engine.micro_step(loss)
    k = ascent_count(len(labels), tc.sam_ascent_fraction)
    weights = [p for p in engine.module.parameters() if p.requires_grad]
    # The ascent runs on the bare module: no engine hooks, no communication.
    with perturbed(
        weights, lambda: loss_of(engine.module, images[:k], labels[:k]), tc.sam_rho
    ) as loss:
        engine.backward(loss_of(engine.engine, images, labels))
    return loss, engine.step()


def _stop_nonfinite(cfg: PretrainConfig, rank: int, state, saved: int | None) -> None:
    """Every rank stops here together (the skip is agreed); rank 0 leaves the record."""
    n, limit = state.nonfinite_streak, cfg.train.max_nonfinite_steps
    kept = "no checkpoint was written yet" if saved is None else (
        f"the latest checkpoint (step {saved}) is intact")  # fmt: skip
    reason = (f"stopped at step {state.step}: {n} steps in a row had a non-finite loss or gradient"
              f" (train.max_nonfinite_steps={limit}); the weights are those of step"
              f" {state.step - n} and {kept}; expected finite steps: lower train.base_lr in a"
              " new run.dir, or check the data")  # fmt: skip
    _say(rank, reason)
    if rank == 0:
        stopped.record(cfg.run.dir, reason, state.step)


def _model_overrides(cfg: PretrainConfig) -> dict:
    pairs = (("drop_rate", cfg.model.drop_rate), ("stochdepth_rate", cfg.model.stochdepth_rate))
    return {k: v for k, v in pairs if v is not None}


def _checkpoint(engine, state, ema, rank: int, faults: Faults) -> None:
    with tempfile.TemporaryDirectory(prefix="nfscale-ckpt-") as tmp:
        checkpoint.save(engine, state, ema, tmp, rank)
        faults.kill("checkpoint", state.step)
        ray.train.report({"step": state.step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _tracker(cfg: PretrainConfig, rank: int, state) -> Tracker:
    if rank != 0:
        return Tracker()
    uri = cfg.run.mlflow_uri or default_tracking_uri(cfg.run.dir)
    name = os.path.basename(cfg.run.dir.rstrip("/"))
    parent = cfg.run.mlflow_parent  # nested under a sweep's run
    return MlflowTracker(uri, cfg.run.experiment, name, cfg.run.dir, state.mlflow_run_id, parent)


def _mean(x: torch.Tensor, world: int) -> float:
    x = x.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(x)
    return x.item() / world


def _say(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)
