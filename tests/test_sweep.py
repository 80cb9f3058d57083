"""jobs/sweep.py: the grid and the LR search, the append-only results table, one-line errors,
and end to end: a 2 models x 2 budgets nano sweep on Ray, killed mid-way, re-run (finished
points skipped, the interrupted one resumed), nested MLflow runs, then fitted and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import UserError
from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.sweep.plan import Grid, LrSearch, Point
from pipeline.sweep.results import COLUMNS, ResultsTable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _row(point: Point, status: str, loss: float | None = None) -> dict:
    return {"point": point.name, "status": status, "heldout_loss": loss}


def test_grid_hands_out_every_point_once():
    grid = Grid(["a", "b"], [1.0, 0.5], [1.0, 2.0])
    points = grid.ready({})
    assert len(points) == 8 and len(set(points)) == 8
    assert points[0] == Point("a", 0.5, 1.0)  # budgets in increasing order
    assert grid.ready({}) == []


def test_lr_search_tries_two_multipliers_and_carries_the_best_forward():
    search = LrSearch(["small", "big"], [2.0, 1.0], start=1.0)
    first = search.ready({})
    assert first == [Point("small", 1.0, 1.0), Point("small", 1.0, 0.5)]
    outcomes = {first[0].name: _row(first[0], "finished", 2.0)}
    assert search.ready(outcomes) == []  # one trial of the cell before is still running
    outcomes[first[1].name] = _row(first[1], "finished", 1.5)  # half the LR was better
    second = search.ready(outcomes)
    # Next budget of the same model and the next model's first budget both start from 0.5.
    assert second == [Point("small", 2.0, 0.5), Point("small", 2.0, 0.25),
                      Point("big", 1.0, 0.5), Point("big", 1.0, 0.25)]  # fmt: skip
    outcomes |= {p.name: _row(p, "failed") for p in second[2:]}  # a failed cell: its start goes on
    assert search.ready(outcomes) == [Point("big", 2.0, 0.5), Point("big", 2.0, 0.25)]


def test_results_table_appends_and_the_last_row_of_a_point_wins(tmp_path):
    table = ResultsTable(str(tmp_path / "results.csv"))
    table.append({"point": "p1", "status": "failed", "error": "boom, with a comma"})
    table.append({"point": "p2", "status": "finished", "heldout_loss": 1.25})
    table.append({"point": "p1", "status": "finished", "heldout_loss": 1.5})
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 4  # header once, nothing rewritten
    latest = table.latest()
    assert latest["p1"]["status"] == "finished" and latest["p1"]["heldout_loss"] == "1.5"
    assert table.rows()[0]["error"] == "boom, with a comma"
    other = tmp_path / "other.csv"
    other.write_text("model,loss\nx,1\n")
    with pytest.raises(UserError, match="expected"):
        ResultsTable(str(other)).rows()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep-data")
    cfg = DemoDataConfig(out=str(out), classes=4, train_per_class=10, val_per_class=4,
                         reference=4, planted=0, size=40, workers=1, parallel_ingest=False)  # fmt: skip
    return build_demo_data(cfg) / "shards"


def _sweep_args(data: Path, sweep_dir: Path) -> list[str]:
    return [f"sweep.dir={sweep_dir}", "sweep.models=[nfnet_nano0, nfnet_nano1]",
            "sweep.epochs=[0.8, 1.6]", f"pretrain.data.train={data / 'train'}",
            f"pretrain.data.val={data / 'val'}", "pretrain.data.resolution=32",
            "pretrain.data.eval_resolution=32", "pretrain.train.global_batch=16",
            "pretrain.train.micro_batch=4", "pretrain.train.checkpoint_every=1",
            "pretrain.train.log_every=1", "pretrain.train.warmup_epochs=0"]  # fmt: skip


def _ray_stop() -> None:
    subprocess.run([str(Path(PY).parent / "ray"), "stop", "--force"], capture_output=True,
                   timeout=120)  # fmt: skip


def test_bad_sweep_input_is_one_line_before_ray_starts(tiny_data, tmp_path):
    for override, expected in [
        ("sweep.models=[nfnet_nano0, nfnet_f99]", "unknown model nfnet_f99"),
        ("pretrain.train.global_batch=10", "sweep point nfnet_nano0 x 0.8 epochs"),
        ("sweep.epochs=[0.5, 0.5]", "expected distinct values > 0"),
    ]:
        out = subprocess.run([PY, "jobs/sweep.py", *_sweep_args(tiny_data, tmp_path / "s"), override],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-2000:]
        assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Ray" not in out.stdout + out.stderr


@pytest.mark.e2e
def test_sweep_killed_and_rerun_skips_finished_points_then_reports(tiny_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    results = sweep_dir / "results.csv"
    cmd = [PY, "jobs/sweep.py", *_sweep_args(tiny_data, sweep_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 400
        while not (results.exists() and results.read_text().count("finished") >= 1):
            assert proc.poll() is None and time.time() < deadline, "no point finished in time"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray and the running point's workers
        proc.wait(timeout=60)
    finally:
        _ray_stop()
    first = ResultsTable(str(results)).rows()
    assert [r["status"] for r in first] == ["finished"]

    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    _ray_stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"sweep: {first[0]['point']} finished before, skipped" in out.stdout
    assert "sweep: 3 finished, 1 skipped (finished before), 0 failed" in out.stdout
    rows = ResultsTable(str(results)).rows()
    assert [r["point"] for r in rows].count(first[0]["point"]) == 1  # not run twice
    latest = ResultsTable(str(results)).latest()
    assert len(latest) == 4 and all(r["status"] == "finished" for r in latest.values())
    for r in latest.values():
        summary = json.loads((Path(r["run_dir"]) / "final" / "summary.json").read_text())
        assert float(r["heldout_loss"]) == summary["heldout_loss"]
        assert int(r["images_seen"]) == summary["images_seen"] and float(r["flops"]) > 0
    assert {float(r["epochs"]) for r in latest.values()} == {0.8, 1.6}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    parent = (sweep_dir / "mlflow_run_id").read_text().strip()
    for r in latest.values():
        child = client.get_run(r["mlflow_run_id"])
        assert child.data.tags.get("mlflow.parentRunId") == parent
        assert "heldout_loss" in child.data.metrics

    report = sweep_dir / "report"
    rep = subprocess.run([PY, "jobs/report.py", "--results", str(results), "--out", str(report),
                          "--bootstrap", "20", "--mlflow-run-id", parent, "--mlflow-uri",
                          f"sqlite:///{sweep_dir / 'mlflow.db'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (report / "report.html").exists() and (report / "fit.json").exists()
    assert list(report.glob("*.png"))
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert "scaling_report" in artifacts and "results.csv" in artifacts
