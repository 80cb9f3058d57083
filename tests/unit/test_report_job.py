"""The report job's contract (jobs/report.py): fit.json keys, report folder, MLflow logging, and one
``error:`` line with exit status 2 for bad input."""

import csv
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import run_job
from pipeline.scaling.synthetic import SweepSpec, sweep_rows
from tests.builders import chinchilla_csv

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "report.py"
COEFFICIENTS = ("E", "A", "B", "alpha", "beta")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(JOB), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def load_job():
    spec = importlib.util.spec_from_file_location("report_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_folder(out: Path) -> dict:
    doc = json.loads((out / "fit.json").read_text())
    for name in COEFFICIENTS:
        entry = doc["parametric"][name]
        lo, hi = entry["ci95"]
        assert math.isfinite(entry["value"]) and lo <= hi
    assert {"law", "law_with_E", "params_opt", "data_opt", "runs"} <= set(doc["frontier"])
    assert (out / "report.md").is_file()
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all((out / name).is_file() and "/" not in name for name in images)
    assert len(list(out.glob("*.png"))) >= 1
    for name in images:
        assert f"]({name})" in (out / "report.md").read_text()
    return doc


def test_cli_on_chinchilla(tmp_path):
    out = tmp_path / "report"
    proc = run_cli("--results", chinchilla_csv(), "--out", out, "--params-col", "Model Size",
                   "--flops-col", "Training FLOP", "--loss-col", "loss",
                   "--drop-highest-loss", "5", "--bootstrap", "50")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "alpha=0.347" in proc.stdout
    doc = check_folder(out)
    assert doc["table"]["rows_used"] == 240 and doc["bootstrap"]["samples"] == 50
    p = doc["parametric"]
    assert 1.769 < p["E"]["value"] < 1.871 and 0.317 < p["alpha"]["value"] < 0.373
    assert p["E"]["ci95"][0] < 1.817 < p["E"]["ci95"][1]  # Epoch AI's estimate in our interval
    assert doc["frontier"]["points"] >= 10 and doc["lr_trend"] is None


def test_cli_on_a_sweep_table(tmp_path, sweep_csv):
    out = tmp_path / "report"
    proc = run_cli("--results", sweep_csv, "--out", out, "--bootstrap", "20", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    doc = check_folder(out)
    assert doc["table"]["rows_used"] == 120 and doc["table"]["points_fitted"] == 24
    assert doc["table"]["skipped"]["not finished"] == 2
    assert doc["table"]["data"] == "images_seen" and doc["table"]["compute"] == "flops"
    assert doc["bootstrap"] == {"samples": 20, "seed": 3}
    assert doc["lr_trend"]["points"] == 24 and doc["lr_trend"]["trials_per_point"] == 5
    assert doc["lr_trend"]["versus_compute"]["exponent"] < 0  # the synthetic best LR falls
    assert doc["frontier"]["epochs_opt"] is not None
    assert all("lr" in run and "epochs" in run for run in doc["frontier"]["runs"])
    assert {"loss_vs_compute.png", "parametric.png", "optimal.png", "lr.png"} <= {
        p.name for p in out.glob("*.png")
    }
    assert "| s | 2e+07 |" in (out / "report.md").read_text()  # the runs table
    # 4 sizes x 6 budgets of a known law: trusted, and said in words first
    assert doc["reliability"] == {"unreliable": False, "reasons": []}, doc["reliability"]
    head = (out / "report.md").read_text().split("Source:")[0]
    assert "Unreliable" not in head and "Compute-optimal model size grows as C^" in head
    assert "over 3.0 decades of compute, carried by 15 frontier points of 24" in head


def test_cli_on_a_small_sweep_skips_the_parametric_fit(tmp_path):
    """2 models x 2 epoch budgets: 4 points, too few for Approach 3 (6+): the report is still
    written, with the frontier, the LR trend and the runs, and says why the parametric fit is
    missing."""
    spec = SweepSpec(models=(("m", 7.0e7, 3.7e10), ("l", 2.5e8, 1.1e11)), epochs=(1.0, 4.0),
                     lrs=(1.6,), noise=0.003)  # fmt: skip
    rows = sweep_rows(spec)
    assert len(rows) == 4 and set(rows[0]) == {
        "model", "params", "epochs", "lr", "images_seen", "flops", "device_hours",
        "heldout_loss", "status", "run_dir", "mlflow_run_id",
    }  # fmt: skip
    out = tmp_path / "report"
    proc = run_cli("--results", write_rows(tmp_path / "small.csv", rows), "--out", out,
                   "--bootstrap", "20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("fit on 4 points: parametric fit skip")
    doc = json.loads((out / "fit.json").read_text())
    reason = doc["parametric"]["skipped"]
    assert set(doc["parametric"]) == {"skipped"} and reason in line
    assert "4 usable (N, D) point(s)" in reason and "2 model size(s) and 2 data size(s)" in reason
    assert "at least 6" in reason
    assert doc["table"]["points_fitted"] == 4 and doc["frontier"]["points"] >= 2
    assert doc["frontier"]["law"] is not None and doc["lr_trend"] is None  # one LR: no trend
    reliability = doc["reliability"]
    assert reliability["unreliable"] and reliability["reasons"][:3] == [
        "2 model sizes: too few to fit an exponent on (3 or more needed)",
        "2 budgets: too few to fit an exponent on (3 or more needed)",
        f"no parametric fit: {reason}"]  # fmt: skip
    assert any(r.startswith("the compute-optimal model size's exponent's 95% interval [-1.28,")
               for r in reliability["reasons"])  # fmt: skip
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, page):
        assert f"skipped: {reason}" in text and "parametric.png" not in text
        assert "Unreliable fit: 2 model sizes: too few" in text.split("Source:")[0]  # on top
        assert "No learning-rate figure: every run used one learning rate (1.6)." in text
        assert "falls as C^-" in text.split("Source:")[0]  # the result in words, then the rest
    assert "| model | params | epochs | lr | data | compute | loss | fitted | frontier |" in md
    images = re.findall(r'<img src="([^"]+)"', page)
    assert "loss_vs_compute.png" in images and all((out / name).is_file() for name in images)
    assert (out / "loss_vs_compute.png").is_file() and (out / "optimal.png").is_file()
    assert not (out / "parametric.png").exists()


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def bad_tables(tmp: Path, sweep: Path) -> dict[str, list[str]]:
    one = sweep_rows(SweepSpec(lrs=(1.6,)))[:1]
    none_finished = [{**r, "status": "failed"} for r in sweep_rows(SweepSpec(lrs=(1.6,)))[:4]]
    words = sweep_rows(SweepSpec(lrs=(1.6,)))
    words[4]["params"] = "huge"
    out = str(tmp / "o")
    return {
        "not found": ["--results", str(tmp / "missing.csv"), "--out", out],
        "no params column 'nope'": ["--results", str(sweep), "--out", out, "--params-col", "nope"],
        "1 usable (N, D) point(s); a scaling report needs at least 2":
            ["--results", str(write_rows(tmp / "one.csv", one)), "--out", out],
        "0 usable (N, D) point(s)":
            ["--results", str(write_rows(tmp / "none.csv", none_finished)), "--out", out],
        "is 'huge'; expected a number": ["--results", str(write_rows(tmp / "w.csv", words)),
                                         "--out", out],
        "not allowed with argument": ["--results", str(sweep), "--out", out,
                                      "--tokens-col", "images_seen", "--flops-col", "flops"],
        "bootstrap=-1": ["--results", str(sweep), "--out", out, "--bootstrap", "-1"],
        "drop_highest_loss=500": ["--results", str(sweep), "--out", out,
                                  "--drop-highest-loss", "500"],
        "required: --results": ["--out", out],
        "invalid int value": ["--results", str(sweep), "--out", out, "--seed", "x"],
    }  # fmt: skip


def test_bad_input_is_one_line_and_status_2(tmp_path, sweep_csv, capsys):
    main = load_job().main
    for expected, argv in bad_tables(tmp_path, sweep_csv).items():
        assert run_job(main, argv) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (expected, err)
        assert expected in err[0], (expected, err[0])


@pytest.mark.parametrize("case", ["not found", "is 'huge'; expected a number"])
def test_bad_input_from_the_command_line(tmp_path, sweep_csv, case):
    proc = run_cli(*bad_tables(tmp_path, sweep_csv)[case])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and case in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
