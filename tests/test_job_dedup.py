"""The dedup job's contract: outputs, audit records, kept shards, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.data.manifest import read_manifest
from pipeline.data.records import records
from pipeline.dedup.job import DedupJobConfig, run_dedup

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mini_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoDataConfig(out=str(out), classes=4, train_per_class=6, val_per_class=1, reference=16,
                         planted=8, workers=1, parallel_ingest=False)  # fmt: skip
    build_demo_data(cfg)
    return out


@pytest.mark.e2e
def test_dedup_job_writes_kept_shards_and_audit(mini_demo, tmp_path):
    raw = mini_demo / "raw"
    report, manifest = run_dedup(  # manifest: the kept shards, checked from disk below too
        DedupJobConfig(
            reference=str(raw / "reference"), pool=str(raw / "train"), out=str(tmp_path / "out")
        ),
        progress=False,
    )
    lines = [
        json.loads(x) for x in (tmp_path / "out" / "duplicates.jsonl").read_text().splitlines()
    ]
    assert len(lines) == len(report.removed) > 0
    references = {r.source for r in records(str(raw / "reference"))}
    pool = {r.source for r in records(str(raw / "train"))}
    for line in lines:
        assert set(line) == {"key", "source", "match", "score", "stage"}
        assert line["source"] in pool and line["match"] in references
        assert line["stage"] in ("exact", "phash", "embedding") and 0 < line["score"] <= 1
    planted = [json.loads(x) for x in (mini_demo / "planted.jsonl").read_text().splitlines()]
    found = {line["source"]: line["match"] for line in lines}
    hits = [p for p in planted if p["pool"] in found]
    assert hits and all(found[p["pool"]] == p["reference"] for p in hits)  # right match each time
    kept = read_manifest(str(tmp_path / "out" / "pool.manifest.json"))
    assert kept.num_samples == len(pool) - len(lines) - len(report.undecodable)
    full = read_manifest(str(mini_demo / "shards" / "train" / "train.manifest.json"))
    assert kept.classes == full.classes  # class indices unchanged by removals
    assert manifest == kept


def test_dedup_cli_bad_input_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "jobs/dedup.py", "--reference", str(tmp_path / "nope"), "--pool", str(tmp_path),
         "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error: ")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    bad = subprocess.run(
        [sys.executable, "jobs/dedup.py", "--reference", str(tmp_path), "--pool", str(tmp_path),
         "--out", str(tmp_path / "o"), "--threshold", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "threshold=1.5" in bad.stderr


@pytest.mark.e2e
@pytest.mark.slow  # ~40 s: `make test-slow`; `make bench` measures the same (benchmarks/dedup_quality)
def test_planted_duplicates_in_the_default_demo_data_are_found(tmp_path):
    """Issue acceptance: precision and recall >= 0.95 on the demo data at the job's defaults."""
    root = build_demo_data(DemoDataConfig(out=str(tmp_path / "demo"), parallel_ingest=False))
    report, _ = run_dedup(
        DedupJobConfig(reference=str(root / "raw" / "reference"), pool=str(root / "raw" / "train"),
                       out=str(tmp_path / "out")),
        progress=False,
    )  # fmt: skip
    planted = {
        p["pool"]: p["reference"]
        for p in map(json.loads, (root / "planted.jsonl").read_text().splitlines())
    }
    found = {r["source"]: r["match"] for r in report.removed}
    true_hits = [s for s in found if s in planted]
    precision, recall = len(true_hits) / len(found), len(true_hits) / len(planted)
    assert len(planted) == 128 and precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(found[s] == planted[s] for s in true_hits)  # each recorded with its own reference
