"""The prepared GPU check (benchmarks/gpu_check.py) in its dry mode: the same code on the CPU at
tiny sizes, so it cannot rot between the rare sessions that have a GPU. It asserts what the
check writes, not how fast anything is."""

from __future__ import annotations

import json

from benchmarks import gpu_check


def test_the_dry_gpu_check_runs_every_section_and_writes_its_json_and_table(tmp_path):
    assert gpu_check.main(["--dry", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["dry"] is True and results["device"] == "cpu"
    rows = results["throughput"]
    assert set(rows) == {"ours_f0_32", "ours_f0_32_channels_last", "timm_f0_32",
                         "timm_f0_32_channels_last", "ours_f7plus_32"}  # fmt: skip
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("trace"))
        assert row["images_per_s"] > 0 and row["train_tflop_per_s"] > 0
        assert row["mfu"] is None  # no peak for a CPU: no MFU claimed
    assert rows["ours_f0_32_channels_last"]["channels_last"] is True
    assert results["ours_over_timm_f0"] > 0
    assert results["ema"]["update_s"] > 0 and results["ema"]["params"] > 8e6
    memory = results["memory"]
    assert [m["micro_batch"] for m in memory] == [1, 2]
    assert memory[1]["estimate_gib"] > memory[0]["estimate_gib"] > 0  # activations grow
    assert results["jpeg"]["cpu_images_per_s_per_core"] > 0
    assert results["jpeg"]["gpu"] == "skipped: no CUDA device"
    table = (tmp_path / "gpu_check.md").read_text()
    assert "dry run: no timing claims" in table and "| nfnet_f0 | 32 | 1 |" in table
    assert "Sections that failed" not in table


def test_sections_past_the_time_budget_are_skipped_and_said_so(tmp_path):
    assert gpu_check.main(["--dry", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    skipped = "skipped: over the time budget (--budget-s)"
    assert all(row["error"] == skipped for row in results["throughput"].values())
    assert results["memory"]["error"] == skipped and results["jpeg"]["error"] == skipped
    assert "Sections that failed: ours_f0_32" in (tmp_path / "gpu_check.md").read_text()
