"""The prepared GPU check (`make gpu-check`): one command, <= 7 minutes on one GPU, one JSON file
and one Markdown table for BENCHMARKS.md.

    python -m benchmarks.gpu_check [--out DIR] [--dry]

It runs on the GPU machine's own image (torch, torchvision, timm, no DeepSpeed or Ray), so the
step it times is the bf16 step DeepSpeed runs, written in torch: a bf16 module, fp32 master
weights, AGC (the stacked foreach path CUDA takes) on the fp32 gradient, SGD with Nesterov
momentum on the masters, the masters copied back. What it measures:

- training throughput and MFU, bf16: F0 at 192 and 224 px, F7+ at 224 px; timm's dm_nfnet_f0
  through the same step in the same run; NCHW against channels_last;
- the AGC share of the step, and the cost of one EMA update (ours, pipeline/train/worker/ema.py);
- peak torch.cuda.max_memory_allocated for F7+ at micro-batch 1, 8 and 16, beside our memory
  model's figure for the same step (pipeline/train/estimates/memory.py, without the CUDA context);
- JPEG decode + crop to 224 px: nvJPEG through torchvision (batched, on the GPU) against our
  CPU loader's decode (pipeline/data/transforms.py) on one core, and how many cores would feed
  the measured F7+ throughput.

Each section runs on its own: one that fails records its error and the others go on (a GPU
machine is lent for minutes). `--dry` runs the same code on the CPU at tiny sizes (nano models,
32 px, one timed step) and makes no timing claims: `make test` runs it so the check cannot rot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # the GPU image has no cluster stack: pipeline.interpreter
    os.environ.setdefault("NFSCALE_TORCH_ONLY", "1")

import torch
import torch.nn.functional as F

from pipeline.models import create_model
from pipeline.optim.agc import adaptive_grad_clip_
from pipeline.optim.param_groups import agc_parameters
from pipeline.train.estimates.compute import PEAK_BF16_TFLOPS, train_flops_per_image

GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """What each section runs: the real check's, or the dry run's tiny stand-ins."""

    f0: str
    f7plus: str
    resolutions: tuple[int, ...]  # F0's; the last is where ours meets timm
    f7plus_res: int
    batch_f0: int
    batch_f7plus: int
    memory_batches: tuple[int, ...]
    warmup: int
    steps: int
    jpegs: int
    jpeg_side: int


REAL = Sizes("nfnet_f0", "nfnet_f7plus", (192, 224), 224, 64, 16, (1, 8, 16), 3, 10, 256, 448)
DRY = Sizes("nfnet_f0", "nfnet_nano7", (32,), 32, 1, 2, (1, 2), 1, 1, 8, 64)


class Bf16Step:
    """DeepSpeed's bf16 step, in torch: bf16 module, fp32 masters, AGC, SGD, copy back."""

    def __init__(self, model: torch.nn.Module, device: torch.device, channels_last: bool = False):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, dtype=torch.bfloat16, memory_format=fmt).train()
        self.channels_last = channels_last
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.masters = [p.detach().float().clone() for p in self.params]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.clipped = [self.masters[index[id(p)]] for p in agc_parameters(self.model)]
        self.opt = torch.optim.SGD(self.masters, lr=0.1, momentum=0.9, nesterov=True, foreach=True)
        self.device = device

    def __call__(self, x: torch.Tensor, y: torch.Tensor, agc_events=None) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        F.cross_entropy(self.model(x).float(), y).backward()
        for master, p in zip(self.masters, self.params, strict=True):
            master.grad = p.grad.float()
            p.grad = None
        if agc_events:
            agc_events[0].record()
        adaptive_grad_clip_(self.clipped, 0.01)
        if agc_events:
            agc_events[1].record()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(batch: int, res: int, device: torch.device, classes: int = 1000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device=device, dtype=torch.bfloat16)
    return x, torch.randint(0, classes, (batch,), generator=g).to(device)


def throughput(model, name: str, res: int, batch: int, sizes: Sizes, device, peak,
               channels_last: bool = False, flops_of: str | None = None) -> dict:  # fmt: skip
    """Images per second of the bf16 step, its MFU, and the AGC share of the step."""
    step = Bf16Step(model, device, channels_last)
    x, y = _batch(batch, res, device)
    for _ in range(sizes.warmup):
        step(x, y)
    _sync(device)
    cuda = device.type == "cuda"
    agc_ms = []
    start = time.perf_counter()
    for _ in range(sizes.steps):
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda else None
        step(x, y, events)
        if events:
            agc_ms.append(events)
    _sync(device)
    seconds = (time.perf_counter() - start) / sizes.steps
    flops = train_flops_per_image(flops_of or name, 1000, res)
    out = {"model": name, "res": res, "batch": batch, "channels_last": channels_last,
           "step_s": seconds, "images_per_s": batch / seconds,
           "train_tflop_per_s": flops * batch / seconds / 1e12}  # fmt: skip
    out["mfu"] = out["train_tflop_per_s"] / peak if peak else None
    if agc_ms:
        agc = statistics.median(a.elapsed_time(b) for a, b in agc_ms) / 1e3
        out["agc_s"], out["agc_share"] = agc, agc / seconds
    del step
    return out


def ema_update(name: str, device) -> dict:
    """One EMA update of the whole model's weights (one rank: ZeRO's slice is all of it)."""
    from types import SimpleNamespace

    from pipeline.train.worker.ema import Ema

    model = _model(name, device).to(dtype=torch.bfloat16)
    engine = SimpleNamespace(module=model, zero_optimization_stage=lambda: 0)
    ema = Ema(engine, 0.99999)
    ema.update(engine, 0)
    _sync(device)
    start, n = time.perf_counter(), 10
    for step in range(1, n + 1):
        ema.update(engine, step)
    _sync(device)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "update_s": (time.perf_counter() - start) / n}


def memory(name: str, res: int, batches: tuple[int, ...], device) -> list[dict]:
    """Peak allocated bytes of the bf16 step at each micro-batch, and our model's figure."""
    from pipeline.train.estimates import memory as model_of

    with torch.device("meta"):
        meta = create_model(name)
    per_image = model_of.activation_bytes_per_image(meta, res, "bf16")
    rows = []
    step = Bf16Step(_model(name, device), device)
    for batch in batches:
        ds = {"train_micro_batch_size_per_gpu": batch, "train_batch_size": batch,
              "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 0}}  # fmt: skip
        estimate = model_of.estimate(meta, res, ds, "bf16", gpu=True, per_image=per_image)
        row = {"model": name, "res": res, "micro_batch": batch,
               "estimate_gib": (estimate.peak - estimate.process) / GIB}  # fmt: skip
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            x, y = _batch(batch, res, device)
            for _ in range(2):
                step(x, y)
            torch.cuda.synchronize(device)
            row["max_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            row["estimate_over_measured"] = row["estimate_gib"] / row["max_allocated_gib"]
        rows.append(row)
    return rows


def jpeg_decode(sizes: Sizes, device, f7plus_images_per_s: float | None) -> dict:
    """Decode + random-resized crop to 224 px: our CPU loader on one core against nvJPEG."""
    import numpy as np

    from pipeline.data.demo_images import jpeg_bytes, render
    from pipeline.data.transforms import decode_region, image_size, random_resized_box

    jpegs = [jpeg_bytes(render(i % 32, 0, i, sizes.jpeg_side)) for i in range(sizes.jpegs)]
    rng = np.random.default_rng(0)
    boxes = [random_resized_box(*image_size(j)[:2], rng) for j in jpegs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as each loader process runs
    try:
        start = time.perf_counter()
        for data, box in zip(jpegs, boxes, strict=True):
            decode_region(data, box, 224)
        cpu = len(jpegs) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    out = {"images": len(jpegs), "side": sizes.jpeg_side, "cpu_images_per_s_per_core": cpu}
    if device.type != "cuda":
        out["gpu"] = "skipped: no CUDA device"
        return out
    from torchvision.io import decode_jpeg

    encoded = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]

    def gpu_pass() -> None:
        images = decode_jpeg(encoded, device=device)
        for img, (x0, y0, x1, y1) in zip(images, boxes, strict=True):
            crop = img[:, int(y0) : int(y1), int(x0) : int(x1)][None].float()
            F.interpolate(crop, size=(224, 224), mode="bilinear", antialias=True)

    gpu_pass()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        gpu_pass()
    torch.cuda.synchronize(device)
    out["gpu_images_per_s"] = 3 * len(jpegs) / (time.perf_counter() - start)
    if f7plus_images_per_s:
        out["cpu_cores_to_feed_f7plus"] = f7plus_images_per_s / cpu
    return out


def _model(name: str, device: torch.device) -> torch.nn.Module:
    with device:  # initialised where it runs: F7+'s 830M parameters in seconds on a GPU
        return create_model(name)


# Sections still to start after this many seconds are skipped: the device is lent for minutes,
# and a check that runs over loses everything it measured (`--budget-s`).
DEADLINE = [float("inf")]


def _section(results: dict, key: str, fn, *args, **kwargs):
    if time.monotonic() > DEADLINE[0]:
        results[key] = {"error": "skipped: over the time budget (--budget-s)"}
        print(f"gpu-check: {key} skipped (over the time budget)", flush=True)
        return results[key]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    start = time.perf_counter()
    try:
        results[key] = fn(*args, **kwargs)
    except Exception as e:  # one failed section must not cost the others
        results[key] = {
            "error": f"{type(e).__name__}: {e}",
            "trace": traceback.format_exc()[-2000:],
        }
    print(f"gpu-check: {key} ({time.perf_counter() - start:.1f} s)", flush=True)
    return results[key]


def run(sizes: Sizes, device: torch.device, dry: bool) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    results: dict = {"date": datetime.date.today().isoformat(), "device": name, "dry": dry,
                     "torch": torch.__version__, "peak_bf16_tflops": peak}  # fmt: skip
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = results.setdefault("throughput", {})
    for res in sizes.resolutions:
        _section(rows, f"ours_f0_{res}", throughput, _model(sizes.f0, device), sizes.f0, res,
                 sizes.batch_f0, sizes, device, peak)  # fmt: skip
    res = sizes.resolutions[-1]
    _section(rows, f"ours_f0_{res}_channels_last", throughput, _model(sizes.f0, device), sizes.f0,
             res, sizes.batch_f0, sizes, device, peak, channels_last=True)  # fmt: skip

    def timm_f0(channels_last: bool = False) -> dict:
        from pipeline.testing.timm import import_timm

        timm = import_timm()
        with device:
            model = timm.create_model("dm_nfnet_f0")
        return throughput(model, "timm_dm_nfnet_f0", res, sizes.batch_f0, sizes, device, peak,
                          channels_last, flops_of=sizes.f0)  # fmt: skip

    _section(rows, f"timm_f0_{res}", timm_f0)
    _section(rows, f"timm_f0_{res}_channels_last", timm_f0, True)
    f7 = _section(rows, f"ours_f7plus_{sizes.f7plus_res}", throughput, _model(sizes.f7plus, device),
                  sizes.f7plus, sizes.f7plus_res, sizes.batch_f7plus, sizes, device, peak)  # fmt: skip
    ours, theirs = rows.get(f"ours_f0_{res}", {}), rows.get(f"timm_f0_{res}", {})
    if "images_per_s" in ours and "images_per_s" in theirs:
        results["ours_over_timm_f0"] = ours["images_per_s"] / theirs["images_per_s"]
    _section(results, "ema", ema_update, sizes.f7plus, device)
    _section(results, "memory", memory, sizes.f7plus, sizes.f7plus_res, sizes.memory_batches,
             device)  # fmt: skip
    _section(results, "jpeg", jpeg_decode, sizes, device, f7.get("images_per_s"))
    results["targets"] = {"mfu_f7plus_224": 0.45, "ours_over_timm_f0": 1.1}
    return results


def _fmt(value, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(results: dict) -> str:
    """The table BENCHMARKS.md takes, with the device, the date and the command."""
    lines = [f"GPU check on {results['device']}, {results['date']}, torch {results['torch']}"
             f"{' (dry run: no timing claims)' if results['dry'] else ''}:"
             " `python -m benchmarks.gpu_check`", "",
             "| step | px | micro-batch | images/s | TFLOP/s | MFU | AGC share |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, row in results["throughput"].items():
        if "error" in row:
            lines.append(f"| {key} | | | error: {row['error'][:80]} | | | |")
            continue
        layout = ", channels_last" if row["channels_last"] else ""
        lines.append(f"| {row['model']}{layout} | {row['res']} | {row['batch']} |"
                     f" {_fmt(row['images_per_s'])} | {_fmt(row['train_tflop_per_s'])} |"
                     f" {_fmt(row['mfu'], '.1%')} | {_fmt(row.get('agc_share'), '.1%')} |")  # fmt: skip
    lines += ["", f"ours / timm (F0): {_fmt(results.get('ours_over_timm_f0'))} (target 1.1);"
              " F7+ MFU target 45%."]  # fmt: skip
    ema = results.get("ema", {})
    if "update_s" in ema:
        lines.append(f"EMA update, {ema['model']} ({ema['params'] / 1e6:.0f}M params):"
                     f" {ema['update_s'] * 1e3:.2f} ms")  # fmt: skip
    mem = results.get("memory")
    if isinstance(mem, list):
        lines += ["", "| F7+ micro-batch | max allocated GiB | our estimate GiB | estimate / measured |",
                  "|---|---|---|---|"]  # fmt: skip
        for row in mem:
            lines.append(f"| {row['micro_batch']} | {_fmt(row.get('max_allocated_gib'))} |"
                         f" {_fmt(row['estimate_gib'])} | {_fmt(row.get('estimate_over_measured'))} |")  # fmt: skip
    jpeg = results.get("jpeg", {})
    if "cpu_images_per_s_per_core" in jpeg:
        lines.append("")
        lines.append(f"JPEG decode + crop to 224 px ({jpeg['side']} px sources): CPU"
                     f" {jpeg['cpu_images_per_s_per_core']:.0f} images/s per core; GPU (nvJPEG)"
                     f" {_fmt(jpeg.get('gpu_images_per_s'), '.0f')} images/s; cores to feed"
                     f" F7+: {_fmt(jpeg.get('cpu_cores_to_feed_f7plus'), '.1f')}")  # fmt: skip
    errors = [k for k, v in {**results["throughput"], **{k: results.get(k) for k in ("ema", "memory", "jpeg")}}.items()
              if isinstance(v, dict) and "error" in v]  # fmt: skip
    if errors:
        lines.append(f"\nSections that failed: {', '.join(errors)} (see the JSON for the trace)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"))
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes, no timing claims")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no section after this many seconds (default 360)")  # fmt: skip
    args = parser.parse_args(argv)
    DEADLINE[0] = time.monotonic() + args.budget_s
    if not args.dry and not torch.cuda.is_available():
        print("error: no CUDA device; expected a GPU machine, or --dry", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.dry else torch.device("cuda", 0)
    results = run(DRY if args.dry else REAL, device, args.dry)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
