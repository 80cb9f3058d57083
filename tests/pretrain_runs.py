"""The tiny pretraining run the e2e and chaos tests share (tests/e2e/test_pretrain.py is its
uninterrupted reference, `reference_run` in conftest.py): its arguments, the job as a
subprocess or a `ray job submit`, and the checks every resumed run must pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from pipeline.data.manifest import read_manifest
from pipeline.data.order import GlobalOrder, canonical_batch
from pipeline.train.worker.context import run_registry
from tests.ray_head import RAY

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# 12 steps of 16 (4.8 epochs of 40 images), checkpoints every 2: long enough after the first
# checkpoint for a kill to land mid-run.
TINY = ["train.epochs=4.8", "train.global_batch=16", "train.micro_batch=4", "train.eval_every=6",
        "train.checkpoint.every=2", "train.log_every=2", "train.sample_log=true",
        "data.resolution=64", "data.eval_resolution=64", "data.val_samples=32",
        "train.ema.decay=0.99"]  # fmt: skip
STEPS = 12


def tiny_args(data: Path, run_dir: Path) -> list[str]:
    return [f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"run.dir={run_dir}", *TINY]


def run_pretrain(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "jobs/pretrain.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)  # fmt: skip


def final_weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and (a[k] == b[k]).all(), f"{k} differs"


def assert_close(ours: dict, reference: dict, rtol: float) -> None:
    """Every tensor within rtol of the reference's largest magnitude (an elastic resume sums the
    same gradients in another order); prints the worst for the record."""
    assert ours.keys() == reference.keys()
    worst = max(float((ours[k] - reference[k]).abs().max() / reference[k].abs().max().clamp_min(1e-12))
                for k in reference)  # fmt: skip
    print(f"largest relative difference from the uninterrupted run: {worst:.2e}")
    assert worst <= rtol, f"differs from the uninterrupted run by {worst:.2e} relative"


def assert_exactly_once(run_dir: Path, data: Path, steps: int, batch: int) -> None:
    """Replayed steps (after a restart) overwrite their first record: the last one counts. After
    a restart on another number of workers, a step's last records are those of the world size
    rank 0 last ran it with (a rank that is gone left stale records behind)."""
    last: dict[int, dict[int, dict]] = {}
    for log in sorted((run_dir / "samples").glob("rank*.jsonl")):
        rank = int(log.stem.removeprefix("rank"))
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            last.setdefault(rec["step"], {})[rank] = rec
    per_step = {}
    for step, records in last.items():
        world = records[0]["world"]
        assert all(records[r]["world"] == world for r in range(world)), f"step {step}"
        per_step[step] = {r: records[r]["ids"] for r in range(world)}
    assert sorted(per_step) == list(range(steps))
    stream = [i for s in range(steps) for r in sorted(per_step[s]) for i in per_step[s][r]]
    manifest = read_manifest(str(data / "train" / "train.manifest.json"))
    n = manifest.num_samples
    order = GlobalOrder(manifest.shard_sizes(), seed=0, partitions=8)  # gcd(16, 8): the default
    canonical = [i for s in range(steps) for i in canonical_batch(order, s * batch, batch)]
    assert stream == canonical  # the global order, world-size independent
    for e in range(len(stream) // n):  # every full epoch: every sample exactly once
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    tail = stream[len(stream) // n * n :]
    assert len(set(tail)) == len(tail)  # the partial last epoch: no repeats


def submit_args(address: str, data: Path, run_dir: Path, *extra: str) -> list[str]:
    """`ray job submit` of the tiny run, one worker per node."""
    return [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT), "--", PY,
            "jobs/pretrain.py", *tiny_args(data, run_dir), "cluster.placement=STRICT_SPREAD",
            *extra]  # fmt: skip


def submit_then_fault(argv: list[str], env: dict, run_dir: Path, fault) -> str:
    """Runs the job, calls `fault()` once its first checkpoint is registered, and returns the
    job's output; the job must succeed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    try:
        wait_for_checkpoint(run_dir, proc)
        fault()
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "succeeded" in out, out[-4000:]
    return out


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    registry = run_registry(str(run_dir), 0, 1)
    deadline = time.time() + timeout
    while registry.latest_step() is None:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
