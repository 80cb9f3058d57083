"""jobs/sweep.py: the grid and the LR search, the append-only results table, and one-line errors
before Ray starts. The sweep end to end (2 models x 2 budgets on Ray, killed after its first
point, re-run with finished points skipped, nested MLflow runs, fitted and reported) runs inside
the demo chain's test, tests/e2e/test_demo_chain.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import UserError
from pipeline.sweep.plan import Grid, LrSearch, Point
from pipeline.sweep.results import COLUMNS, PointResult, ResultsTable

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _row(point: Point, status: str, loss: float | None = None) -> PointResult:
    return PointResult(point=point.name, status=status, heldout_loss=loss)


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
    table.append(PointResult(point="p1", status="failed", error="boom, with a comma"))
    table.append(PointResult(point="p2", status="finished", heldout_loss=1.25, images_seen=64))
    table.append(PointResult(point="p1", status="finished", heldout_loss=1.5))
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 4  # header once, nothing rewritten
    latest = table.latest()
    assert latest["p1"].finished and latest["p1"].heldout_loss == 1.5  # typed, not text
    assert latest["p2"].images_seen == 64 and latest["p1"].params is None  # an empty cell
    assert table.rows()[0].error == "boom, with a comma"
    other = tmp_path / "other.csv"
    other.write_text("model,loss\nx,1\n")
    with pytest.raises(UserError, match="expected"):
        ResultsTable(str(other)).rows()
    older = tmp_path / "older.csv"  # written before heldout_top1 was added: read, then upgraded
    older.write_text(",".join(COLUMNS[:-1]) + "\n" + lines[2].rsplit(",", 1)[0] + "\n")
    assert ResultsTable(str(older)).rows()[0].heldout_loss == 1.25
    ResultsTable(str(older)).append(PointResult(point="p3", status="finished", heldout_top1=0.5))
    assert older.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [(r.point, r.heldout_top1) for r in ResultsTable(str(older)).rows()] == [
        ("p2", None), ("p3", 0.5)]  # fmt: skip
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(COLUMNS) + "\n" + lines[2].replace(",1.25,", ",low,") + "\n")
    with pytest.raises(UserError) as info:
        ResultsTable(str(bad)).rows()
    assert str(info.value).startswith(f"results table {bad}, line 2: value heldout_loss='low'")


def _sweep_args(data: Path, sweep_dir: Path) -> list[str]:
    return [f"sweep.dir={sweep_dir}", "sweep.models=[nfnet_nano0, nfnet_nano1]",
            "sweep.epochs=[0.8, 1.6]", f"pretrain.data.train={data / 'train'}",
            f"pretrain.data.val={data / 'val'}", "pretrain.data.resolution=32",
            "pretrain.data.eval_resolution=32", "pretrain.train.global_batch=16",
            "pretrain.train.micro_batch=4", "pretrain.train.checkpoint.every=1",
            "pretrain.train.log_every=1", "pretrain.train.schedule.warmup_epochs=0"]  # fmt: skip


def test_bad_sweep_input_is_one_line_before_ray_starts(tiny_data, tmp_path):
    for override, expected in [
        ("sweep.models=[nfnet_nano0, nfnet_f99]", "unknown model nfnet_f99"),
        (
            "pretrain.train.global_batch=10",
            "pretrain (onto configs/pretrain/nano.yaml): train.global_batch=10",
        ),
        ("sweep.epochs=[0.5, 0.5]", "expected distinct values > 0"),
    ]:
        out = subprocess.run([PY, "jobs/sweep.py", *_sweep_args(tiny_data, tmp_path / "s"), override],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr[-2000:]
        assert expected in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Ray" not in out.stdout + out.stderr
