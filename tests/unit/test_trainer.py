"""The trainer as components, without Ray (pipeline.testing.local): a callback added without
touching the trainer sees every step; a SIGTERM to one rank mid-step, or a cluster's node-drain
notice, ends the run after that step with its checkpoint, and the next launch resumes from it to
bitwise the uninterrupted weights. In bf16 (DeepSpeed's bf16 optimizer on the CPU accelerator,
the path GPUs take), a kill -9 of one rank resumes bitwise too. The Ray path of the same notice
is in tests/e2e/test_pretrain.py (kill, then preempt)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.multiprocessing import ProcessExitedException

from pipeline.config import build_config
from pipeline.testing import faults
from pipeline.testing.local import local_context
from pipeline.testing.spawn import spawn
from pipeline.train.config import PretrainConfig
from pipeline.train.worker import preemption
from pipeline.train.worker.callbacks import Callback
from pipeline.train.worker.trainer import Trainer

STEPS = 5  # 2 epochs of 40 images in batches of 16


class StepRecorder(Callback):
    """A new per-step callback: what each step looked like, and how the run ended."""

    def __init__(self) -> None:
        self.steps, self.ends = [], 0

    def on_step_end(self, trainer, info):
        self.steps.append({"step": info.step, "lr": info.lr, "ids": len(info.sample_ids),
                           "skipped": info.skipped})  # fmt: skip

    def on_train_end(self, trainer):
        self.ends += 1


def _config(data: str, run_dir: str, *extra: dict, precision: str = "fp32") -> PretrainConfig:
    tree = {
        "run": {"dir": run_dir},
        "model": {"name": "nfnet_nano0"},
        "data": {"train": f"{data}/train", "train_prefix": "train", "val": f"{data}/val",
                 "val_prefix": "val", "resolution": 32, "eval_resolution": 32,
                 "val_samples": 16},
        "train": {"epochs": 2.0, "global_batch": 16, "micro_batch": 4, "ema": {"decay": 0.99},
                  "precision": precision,
                  "eval_every": 2, "checkpoint": {"every": 100}, "log_every": 1},
        "cluster": {"workers": 2},
    }  # fmt: skip
    for more in extra:
        tree["train"].update(more)
    return build_config(PretrainConfig, tree)


def _drained_after(steps: int):
    """A cluster's drain notice (Ray: `get_preemption_info`) from the end of step `steps` on."""
    calls = iter(range(1, 10**6))
    return lambda: next(calls) >= steps


def _worker(rank: int, world: int, data: str, tmp: str, precision: str) -> None:
    record = {}
    term = {"callbacks": [faults.spec(term="2")]}
    for name, cfg, drain in (
        ("reference", _config(data, f"{tmp}/reference", precision=precision), None),
        # SIGTERM to the last rank after its first backward of step 3
        ("preempted", _config(data, f"{tmp}/preempted", term, precision=precision), None),
        # launched again: the cluster announces a node drain at the end of its first step
        ("drained", _config(data, f"{tmp}/preempted", precision=precision), _drained_after(1)),
        ("resumed", _config(data, f"{tmp}/preempted", precision=precision), None),  # no notice
    ):  # fmt: skip
        recorder = StepRecorder()
        ctx = local_context(cfg.run.dir)
        if drain is not None:
            ctx.drain_notice = drain
        Trainer(cfg, ctx, callbacks=[recorder]).run()
        record[name] = {"steps": recorder.steps, "ends": recorder.ends,
                        "finished": Path(cfg.run.dir, "final", "summary.json").exists(),
                        "preempted_at": preemption.take(cfg.run.dir) if rank == 0 else None}  # fmt: skip
    if rank == 0:
        Path(tmp, "record.json").write_text(json.dumps(record))


def _kill_9_then_relaunch(rank: int, world: int, data: str, tmp: str, kill: bool) -> None:
    """bf16: the last rank SIGKILLs itself after its first backward of step 4 (0-based 3); the
    relaunch resumes from the step-2 checkpoint."""
    extra = [{"checkpoint": {"every": 2}}]
    if kill:
        extra.append({"callbacks": [faults.spec(kill="step:3")]})
    cfg = _config(data, f"{tmp}/killed", *extra, precision="bf16")
    Trainer(cfg, local_context(cfg.run.dir)).run()


# bf16 in `make test` (the GPUs' path, plus a kill -9); fp32 (~22 s) in `make test-slow`: its
# Ray twin, tests/e2e/test_pretrain.py, kills and preempts an fp32 run in `make test`.
@pytest.mark.parametrize("precision", [pytest.param("fp32", marks=pytest.mark.slow), "bf16"])
def test_a_callback_sees_every_step_and_sigterm_checkpoints_the_step_then_resumes_bitwise(
    tiny_data, tmp_path, precision
):
    spawn(_worker, 2, str(tiny_data), str(tmp_path), precision)
    if precision == "bf16":  # the path GPUs take: the same loop, bf16 weights, fp32 masters
        with pytest.raises(ProcessExitedException, match="signal SIGKILL"):
            spawn(_kill_9_then_relaunch, 2, str(tiny_data), str(tmp_path), True)
        assert (tmp_path / "killed" / "faults" / "killed-step-3").exists()
        spawn(_kill_9_then_relaunch, 2, str(tiny_data), str(tmp_path), False)
        killed = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
        reference = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
        assert killed.keys() == reference.keys()
        assert all(killed[k].equal(reference[k]) for k in reference)
    record = json.loads((tmp_path / "record.json").read_text())
    reference, preempted, resumed = record["reference"], record["preempted"], record["resumed"]
    drained = record["drained"]
    assert [s["step"] for s in reference["steps"]] == list(range(1, STEPS + 1))
    assert all(s["ids"] == 8 and not s["skipped"] for s in reference["steps"])  # 16 / 2 ranks
    assert reference["ends"] == 1 and reference["preempted_at"] is None
    # SIGTERM after the first backward of 0-based step 2: step 3 finishes and is checkpointed.
    assert [s["step"] for s in preempted["steps"]] == [1, 2, 3] and preempted["ends"] == 1
    assert preempted["preempted_at"] == 3
    assert (tmp_path / "preempted" / "faults" / "terminated-term-2").exists()
    assert not preempted["finished"] and resumed["finished"]
    # The drain notice at the end of step 4: that step is checkpointed, the next launch goes on.
    assert [s["step"] for s in drained["steps"]] == [4] and drained["preempted_at"] == 4
    assert not drained["finished"] and drained["ends"] == 1
    assert [s["step"] for s in resumed["steps"]] == [5]
    # same LRs, same batches
    assert preempted["steps"] + drained["steps"] + resumed["steps"] == reference["steps"]
    for name in ("model.safetensors", "model_ema.safetensors"):
        ours = load_file(str(tmp_path / "preempted" / "final" / name))
        theirs = load_file(str(tmp_path / "reference" / "final" / name))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].equal(theirs[k]) for k in theirs), name
    summary = json.loads((tmp_path / "preempted" / "final" / "summary.json").read_text())
    first = json.loads((tmp_path / "reference" / "final" / "summary.json").read_text())
    assert summary["heldout_loss"] == first["heldout_loss"]
    assert summary["deepspeed"]["bf16"]["enabled"] == (precision == "bf16")
    assert [h["step"] for h in summary["heldout_history"]] == [2, 4]


def test_a_first_sigterm_is_a_notice_and_a_second_ends_the_process_as_before(tmp_path):
    """The first SIGTERM only sets the notice; a second one goes to the handler ours replaced
    (Ray's exits the worker), as without us; closing the notice restores that handler too."""
    probe = """
import os, signal, torch
from pipeline.train.worker.preemption import PreemptionNotice
seen = []
signal.signal(signal.SIGTERM, lambda s, f: seen.append("before"))
notice = PreemptionNotice()
os.kill(os.getpid(), signal.SIGTERM)
print("first", notice.agreed(torch.device("cpu")), seen)
os.kill(os.getpid(), signal.SIGTERM)
print("second", seen)
notice = PreemptionNotice()
notice.close()
os.kill(os.getpid(), signal.SIGTERM)
print("closed", seen)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["first True []", "second ['before']",
                                          "closed ['before', 'before']"], out.stdout  # fmt: skip
