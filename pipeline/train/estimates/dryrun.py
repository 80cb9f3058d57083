"""`jobs/pretrain.py --dry-run`: check a cluster-sized config on a laptop, without training.

Builds the model on the meta device (no memory, no compute) to count parameters, MACs and the
activations a forward keeps, then reports per-rank batch layout, memory per worker under each
ZeRO stage, FLOPs per step and hours per epoch at an assumed MFU. Nothing is started.

Memory per worker, per ZeRO stage, comes from `memory.estimate`, the estimator the preflight
check refuses runs with (device memory on GPU workers, host memory on CPU workers); with
--gpu-memory it also gives each stage's largest micro-batch that fits.
"""

from __future__ import annotations

import torch

from pipeline.data.manifest import Manifest, manifest_path, read_manifest
from pipeline.data.plan import cache_bytes
from pipeline.models import create_model
from pipeline.models.summary import count_macs
from pipeline.optim.schedules import scaled_lr
from pipeline.train.config import (
    PretrainConfig,
    resolved_partitions,
    resolved_precision,
    solve_batch,
    total_steps,
)
from pipeline.train.estimates.compute import PEAK_BF16_TFLOPS
from pipeline.train.estimates.memory import GIB, activation_bytes_per_image, estimate, parse_bytes
from pipeline.train.worker.engine import deepspeed_config

ASSUMED_MFU = 0.45


# Without a readable manifest the data-plane line assumes ingest's default shard size and an
# ImageNet-like mean sample (ImageNet train: 140 GB / 1.28M JPEGs).
ASSUMED_SHARD_BYTES, ASSUMED_SAMPLE_BYTES = 256 * 2**20, 110_000


def _dataset(cfg: PretrainConfig) -> tuple[int | None, int | None, str, Manifest | None]:
    """(samples, classes, where from, manifest): a local manifest, else the config's hints.
    Remote manifests are not read: a dry run stays offline and instant."""
    if "://" in cfg.data.train and not cfg.data.train.startswith("file://"):
        if cfg.data.expected_samples:
            return cfg.data.expected_samples, None, "data.expected_samples", None
        return None, None, "unknown (remote data is not read; set data.expected_samples)", None
    try:
        m = read_manifest(manifest_path(cfg.data.train, cfg.data.train_prefix),
                          cfg.data.storage_options)  # fmt: skip
        return m.num_samples, len(m.classes), f"manifest {cfg.data.train}", m
    except (FileNotFoundError, OSError, ValueError):
        if cfg.data.expected_samples:
            return cfg.data.expected_samples, None, "data.expected_samples", None
        return None, None, "unknown (manifest unreachable; set data.expected_samples)", None


def data_plane(cfg: PretrainConfig, manifest: Manifest | None, step_s: float) -> str:
    """Partitions per worker, the shard cache per worker and the download rate per node."""
    cl, P = cfg.cluster, resolved_partitions(cfg)
    if manifest is not None:
        largest = max(s.bytes for s in manifest.shards)
        sample = sum(s.bytes for s in manifest.shards) / max(1, manifest.num_samples)
        basis = "the manifest's shards"
    else:
        largest, sample = ASSUMED_SHARD_BYTES, ASSUMED_SAMPLE_BYTES
        basis = f"assumed {largest / 2**20:.0f} MiB shards of {sample / 1e3:.0f} KB samples"
    cache = cache_bytes(cfg.data.cache_bytes, P, cfg.data.block_shards, cl.workers, largest)
    nodes = max(1, cl.workers // 8) if cl.use_gpu else 1
    rate = cfg.train.global_batch / step_s * sample / nodes
    return (f"data plane: {P} partitions, {P // cl.workers} per worker; shard cache up to"
            f" {cache / 2**30:.3g} GiB per worker; downloads ~{rate / 1e6:.3g} MB/s per"
            f" {'8-GPU node' if cl.use_gpu else 'machine'} at this step time ({basis})")  # fmt: skip


def gpu_memory(text: str) -> float:
    """--gpu-memory's argparse type: a memory size (argparse prints the one-line error)."""
    import argparse

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def memory_lines(cfg: PretrainConfig, model, micro: int, accum: int, precision: str,
                 gpu_memory: float | None) -> list[str]:  # fmt: skip
    """Peak memory per worker under each ZeRO stage, from the estimator the preflight check
    uses (`memory.estimate`): device memory on GPU workers, host memory on CPU workers; with
    `gpu_memory`, the largest micro-batch that fits it."""
    cl, tc = cfg.cluster, cfg.train
    params = sum(p.numel() for p in model.parameters())
    where = "GPU" if cl.use_gpu else "CPU worker (host memory)"
    fits = f"; largest micro-batch in {gpu_memory / GIB:g} GiB" if gpu_memory else ""
    lines = [
        f"memory per {where} at micro-batch {micro} (pipeline/train/estimates/memory.py{fits}):"
    ]
    per_image = activation_bytes_per_image(model, cfg.data.resolution, precision,
                                           tc.activation_checkpointing)  # fmt: skip
    for stage in range(4):
        ds = deepspeed_config(micro, accum, cl.workers, stage, precision, cl.use_gpu, params)
        e = estimate(model, cfg.data.resolution, ds, precision, tc.activation_checkpointing,
                     gpu=cl.use_gpu, per_image=per_image)  # fmt: skip
        most = f", fits {e.largest_micro_batch(gpu_memory)}" if gpu_memory else ""
        mark = "  <- configured" if stage == cl.zero_stage else ""
        lines.append(f"  ZeRO-{stage}: {e.peak / GIB:7.2f} GiB peak ({e.states / GIB:.2f} states,"
                     f" {e.activations / GIB:.2f} activations, {e.buffers / GIB:.2f} buffers){most}{mark}")  # fmt: skip
    return lines


def dry_run(cfg: PretrainConfig, mfu: float = ASSUMED_MFU, gpu_memory: float | None = None) -> str:
    tc, cl = cfg.train, cfg.cluster
    micro, accum = solve_batch(tc, cl.workers)
    precision = resolved_precision(tc, cl.use_gpu)
    samples, found_classes, source, manifest = _dataset(cfg)
    classes = cfg.model.num_classes or found_classes or 1000
    with torch.device("meta"):
        model = create_model(cfg.model.name, num_classes=classes)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, cfg.data.resolution)
    flops_step = 6.0 * macs * tc.global_batch * tc.sam.flops_factor
    peak = tc.peak_tflops or PEAK_BF16_TFLOPS["H100"]
    step_s = flops_step / (cl.workers * peak * 1e12 * mfu)
    lines = [
        f"dry run: {cfg.model.name}, {params / 1e6:.1f}M params, {classes} classes,"
        f" {cfg.data.resolution} px, {precision}; nothing was started",
        f"batch: global {tc.global_batch} = {cl.workers} workers x {accum} accumulation x"
        f" {micro} micro-batch; peak LR {scaled_lr(tc.schedule.base_lr, tc.global_batch, tc.schedule.reference_batch):.4g}",
        f"compute: {6 * macs / 1e9:.3g} GFLOPs/image (6 x MACs), {flops_step / 1e12:.4g} TFLOPs/step",
        *memory_lines(cfg, model, micro, accum, precision, gpu_memory),
    ]  # fmt: skip
    lines.append(f"time: {step_s:.3f} s/step at {mfu:.0%} MFU of {peak:g} TFLOP/s per worker")
    lines.append(data_plane(cfg, manifest, step_s))
    if samples:
        steps = total_steps(tc, samples)
        per_epoch = samples / tc.global_batch * step_s / 3600
        lines.append(
            f"data: {samples:,} samples ({source}); {steps:,} steps for {tc.epochs:g} epochs;"
            f" {per_epoch:.3g} h/epoch, {per_epoch * cl.workers:.3g} GPU-hours/epoch"
        )
    else:
        lines.append(f"data: {source}")
    return "\n".join(lines)
