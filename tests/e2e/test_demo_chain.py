"""The main job end to end at a reduced size (issue 6), which is also the sweep's acceptance
test (issue 5): demo data -> Ray ingest -> dedup -> a 2 models x 2 budgets sweep on one lane
(its workers kept across points), killed with kill -9 after its first point and the second's
first checkpoint, then re-run (finished points skipped, the interrupted one resumed; a point
that reused the lane's workers bitwise equal to the same run alone) -> SAM fine-tune of the
best point at a higher resolution -> fits and report; then a third run that only reuses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.data.manifest import read_manifest
from pipeline.sweep.results import ResultsTable
from pipeline.train.worker.context import run_registry
from tests.pretrain_runs import assert_bitwise_equal, final_weights

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _args(tmp: Path) -> list[str]:
    point = "{data: {resolution: 32, eval_resolution: 32, val_samples: 16}, train: {global_batch: 8, micro_batch: 4, checkpoint: {every: 1}, log_every: 1, schedule: {warmup_epochs: 0}}, cluster: {workers: 1}}"
    return [
        f"out={tmp / 'runs'}", f"data.out={tmp / 'data'}", "data.classes=4",
        "data.train_per_class=12", "data.val_per_class=4", "data.reference=8", "data.planted=4",
        "data.size=40", "data.workers=1",
        "sweep.sweep.models=[nfnet_nano0, nfnet_nano1]", "sweep.sweep.epochs=[0.5, 1.0]",
        "sweep.sweep.max_concurrent=1", f"sweep.pretrain={point}",
        "finetune.train={epochs: 0.5, global_batch: 16, micro_batch: 4, sam: {ascent_fraction: 0.5},"
        " log_every: 1}",
        "finetune.data={resolution: 32, eval_resolution: 40, val_samples: 16}", "bootstrap=20",
    ]  # fmt: skip


def _demo(tmp: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([PY, "jobs/demo.py", *_args(tmp)], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    return out


def test_demo_chain_killed_mid_sweep_then_rerun_produces_every_artefact(tmp_path, ray_cluster):
    runs = tmp_path / "runs"
    results = runs / "sweep" / "results.csv"
    proc = subprocess.Popen([PY, "jobs/demo.py", *_args(tmp_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    second = runs / "sweep" / "runs" / "nfnet_nano0-e1-lr1"  # the lane's next point
    try:
        deadline = time.time() + 600
        while not (results.exists() and "finished" in results.read_text()
                   and run_registry(str(second), 0, 1).latest_step()):  # fmt: skip
            assert proc.poll() is None and time.time() < deadline, "no sweep point finished"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver: Ray then ends the running point
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = ResultsTable(str(results)).rows()
    done_first = [r.point for r in before if r.finished]
    assert 1 <= len(done_first) < 4  # the kill landed mid-sweep
    interrupted = run_registry(str(second), 0, 1).latest_step()

    out = _demo(tmp_path)
    log = out.stdout + out.stderr
    assert "demo data: up to date" in log and "dedup: done before" in log
    for point in done_first:
        assert f"sweep: {point} finished before, skipped" in out.stdout
    if "nfnet_nano0-e1-lr1" not in done_first:
        assert f"resuming from step {interrupted} of " in out.stdout
    rows = ResultsTable(str(results)).rows()
    assert all([r.point for r in rows].count(p) == 1 for p in done_first)  # never re-run
    latest = ResultsTable(str(results)).latest()
    assert len(latest) == 4 and all(r.finished for r in latest.values())
    for r in latest.values():
        summary = json.loads((Path(r.run_dir) / "final" / "summary.json").read_text())
        assert r.heldout_loss == summary["heldout_loss"] and summary["workers"] == 1
        assert r.images_seen == summary["images_seen"] and r.flops > 0
    # the lane's workers trained earlier points; alone, the same run gives the same weights
    assert re.search(r"lane0: nfnet_nano1-e1-lr1 is point [2-9] on these workers", out.stdout)
    reused = Path(latest["nfnet_nano1-e1-lr1"].run_dir)
    alone = subprocess.run([PY, "jobs/pretrain.py", "--config", str(reused / "run_config.yaml"),
                            f"run.dir={tmp_path / 'alone'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert_bitwise_equal(final_weights(tmp_path / "alone"), final_weights(reused))

    # dedup: the audit trail, and the sweep trained on the kept pool
    audit = [json.loads(x) for x in (runs / "dedup" / "duplicates.jsonl").read_text().splitlines()]
    assert audit and all({"source", "match", "score", "stage"} <= set(a) for a in audit)
    pool = read_manifest(str(tmp_path / "data" / "shards" / "train" / "train.manifest.json"))
    kept = read_manifest(str(runs / "dedup" / "pool.manifest.json"))
    assert kept.num_samples == pool.num_samples - len(audit)
    for r in latest.values():
        assert (
            f"train: {runs / 'dedup'}\n" in (Path(r.run_dir) / "final" / "config.yaml").read_text()
        )

    # fine-tune: the best point's EMA weights, a fresh head, SAM, evaluated at a higher resolution
    best = min(latest.values(), key=lambda r: r.heldout_loss)
    finetune = runs / "finetune" / best.point
    tuned = json.loads((finetune / "final" / "summary.json").read_text())
    assert tuned["init_from"] == f"{best.run_dir}/final/model_ema.safetensors"
    assert tuned["resolution"] == 32 and tuned["eval_resolution"] == 40
    assert 0 <= tuned["heldout_top1"] <= tuned["heldout_top5"] <= 1 and tuned["workers"] == 2
    assert "initialised afresh: fc.weight, fc.bias" in log

    # report and MLflow: one parent run, every point and the fine-tune nested under it
    report = runs / "report"
    assert (report / "report.html").exists() and (report / "fit.json").exists()
    assert {"loss_vs_compute.png"} <= {p.name for p in report.glob("*.png")}
    reliability = json.loads((report / "fit.json").read_text())["reliability"]
    assert reliability["unreliable"]  # 2 sizes x 2 budgets cannot carry a law: flagged, and why
    assert reliability["reasons"][:2] == [
        "2 model sizes: too few to fit an exponent on (3 or more needed)",
        "2 budgets: too few to fit an exponent on (3 or more needed)"]  # fmt: skip
    assert "Unreliable fit: 2 model sizes" in (report / "report.html").read_text()
    assert "report:" in out.stdout and "mlflow ui --backend-store-uri" in out.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'sweep' / 'mlflow.db'}")
    parent = (runs / "sweep" / "mlflow_run_id").read_text().strip()
    for run_id in [r.mlflow_run_id for r in latest.values()] + [tuned["mlflow_run_id"]]:
        assert client.get_run(run_id).data.tags.get("mlflow.parentRunId") == parent
    assert {"scaling_report", "results.csv"} <= {a.path for a in client.list_artifacts(parent)}

    again = _demo(tmp_path)  # everything complete: reused, and no Ray started
    assert "nothing to do" in again.stdout and " queued" not in again.stdout
    assert "Started a local Ray instance" not in again.stdout + again.stderr
    assert json.loads((finetune / "final" / "summary.json").read_text()) == tuned
    changed = subprocess.run([PY, "jobs/demo.py", *_args(tmp_path), "data.planted=2"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert changed.returncode == 2 and "was built from other demo data" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1 and (finetune / "final").exists()
