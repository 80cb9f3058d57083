"""The dedup job on the default demo data (`make test-slow`): precision and recall of the
planted near-duplicates at the job's defaults."""

import json

import pytest

from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.dedup.job import DedupJobConfig, run_dedup
from tests.builders import dedup_audit


@pytest.mark.slow  # ~40 s: `make test-slow`; `make bench` measures the same (benchmarks/dedup_quality)
def test_planted_duplicates_in_the_default_demo_data_are_found(tmp_path):
    """Issue acceptance: precision and recall >= 0.95 on the demo data at the job's defaults."""
    root = build_demo_data(DemoDataConfig(out=str(tmp_path / "demo"), parallel_ingest=False))
    run_dedup(
        DedupJobConfig(reference=str(root / "raw" / "reference"), pool=str(root / "raw" / "train"),
                       out=str(tmp_path / "out"), parallel=False),
        progress=False,
    )  # fmt: skip
    planted = {
        p["pool"]: p["reference"]
        for p in map(json.loads, (root / "planted.jsonl").read_text().splitlines())
    }
    found = {r["source"]: r["match"] for r in dedup_audit(tmp_path / "out")}
    true_hits = [s for s in found if s in planted]
    precision, recall = len(true_hits) / len(found), len(true_hits) / len(planted)
    assert len(planted) == 128 and precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(found[s] == planted[s] for s in true_hits)  # each recorded with its own reference
