"""jobs/pretrain.py end to end: `ray job submit` against a loopback head node (the reference run
the others match bit for bit), kill -9 of the whole job, then a SIGTERM preemption of the
relaunch, bitwise resume, exactly-once sample coverage and MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from pipeline.config import UserError, load_config
from pipeline.testing import faults
from pipeline.train.config import PretrainConfig
from pipeline.train.driver.launch import finished_summary, preflight
from tests.pretrain_runs import (
    PY,
    ROOT,
    STEPS,
    assert_bitwise_equal,
    assert_exactly_once,
    final_weights,
    run_pretrain,
    tiny_args,
    wait_for_checkpoint,
)


def test_job_submit_writes_weights_summary_and_mlflow(reference_run, tiny_data):
    summary = json.loads((reference_run / "final" / "summary.json").read_text())
    steps = summary["steps"]
    assert steps == STEPS and summary["images_seen"] == STEPS * 16 and summary["workers"] == 2
    assert summary["zero_stage"] == 2 and summary["train_flops"] > 0
    placement = summary["placement"]  # one worker per node: distinct node ranks, local rank 0
    assert [(w["rank"], w["node_rank"], w["local_rank"]) for w in placement] in (
        [(0, 0, 0), (1, 1, 0)], [(0, 1, 0), (1, 0, 0)])  # fmt: skip
    assert summary["heldout_loss"] > 0 and summary["heldout_loss_ema"] > 0
    assert [h["step"] for h in summary["heldout_history"]] == [6]  # and at the end
    peak, estimate = max(summary["peak_rss_gib"]), summary["memory_estimate_gib"]
    assert abs(estimate - peak) <= 0.15 * peak, (summary["peak_rss_gib"], estimate)
    weights = final_weights(reference_run)
    assert "head.fc.weight" in weights or any(k.endswith("fc.weight") for k in weights)
    assert (reference_run / "final" / "model_ema.safetensors").exists()
    assert "resolution: 64" in (reference_run / "final" / "config.yaml").read_text()
    assert_exactly_once(reference_run, tiny_data, steps, 16)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reference_run.parent / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.name"] == "nfnet_nano0"
    assert run.data.params["derived.grad_accum"] == "2" and run.data.params["derived.nodes"] == "2"
    for key in ("loss", "lr", "agc_clip_fraction", "grad_norm", "images_per_s", "heldout_loss",
                "train_flops", "device_hours"):  # fmt: skip
        assert key in run.data.metrics, key
    assert any(k.startswith("system/") for k in run.data.metrics)  # system metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml"} <= artifacts


def test_kill_whole_job_then_a_preempted_rerun_resume_bitwise(
    reference_run, tiny_data, tmp_path, ray_cluster
):
    run_dir = tmp_path / "run"
    cmd = [PY, "jobs/pretrain.py", *tiny_args(tiny_data, run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        wait_for_checkpoint(run_dir, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver: Ray then ends its job's workers
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert not (run_dir / "final").exists()
    # The relaunch is preempted too: one worker gets SIGTERM mid-step 9 (after its first
    # backward). Step 9 is finished and checkpointed, the workers return, and the driver starts
    # them again from it; with max_failures=0, a restart counted as a failure would fail the run.
    preempt = [faults.override(term="8"), "cluster.max_failures=0"]
    out = run_pretrain([*tiny_args(tiny_data, run_dir), *preempt])
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "resuming from step" in log and "fault injection: SIGTERM at term 8" in log
    assert "preempted (SIGTERM): step 9 is checkpointed" in log
    assert "preempted at step 9: starting the workers again from its checkpoint" in log
    assert "resuming from step 9 of 12" in log
    assert_bitwise_equal(final_weights(run_dir), final_weights(reference_run))
    assert_exactly_once(run_dir, tiny_data, STEPS, 16)
    first = json.loads((reference_run / "final" / "summary.json").read_text())
    again = json.loads((run_dir / "final" / "summary.json").read_text())
    assert again["heldout_loss"] == first["heldout_loss"]
    assert [w["node_rank"] for w in again["placement"]] == [0, 0]  # one node, two local ranks
    assert [w["local_rank"] for w in again["placement"]] == [0, 1]
    done = run_pretrain(tiny_args(tiny_data, run_dir))  # a finished run launched again: a no-op
    assert done.returncode == 0 and "finished before (12 steps, same config)" in done.stdout
    assert "Ray" not in done.stdout + done.stderr  # nothing was started
    assert_bitwise_equal(final_weights(run_dir), final_weights(reference_run))
    same = load_config(PretrainConfig, "configs/pretrain/nano.yaml", tiny_args(tiny_data, run_dir))
    assert finished_summary(preflight(same)).steps == STEPS
    cadence = same.model_copy(update={"train": same.train.model_copy(update={"log_every": 3})})
    assert finished_summary(preflight(cadence)).steps == STEPS  # operational: still done
    changed = same.model_copy(update={"train": same.train.model_copy(update={"epochs": 9.6})})
    with pytest.raises(UserError, match=r"another config \(train\.epochs: 4\.8 -> 9\.6\)"):
        preflight(changed)  # never resumes these checkpoints under another recipe
