"""The dedup job's contract: outputs, audit records, kept shards, re-runs after a kill -9,
reuse of the reference index, one-line errors. (Ray-parallel against serial, byte for byte:
tests/e2e/test_data_plane.py, in its Ray instance.)"""

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
from pipeline.data.manifest import read_manifest
from pipeline.data.records import records
from pipeline.dedup.job import DedupJobConfig, run_dedup
from tests.builders import dedup_audit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mini_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoDataConfig(out=str(out), classes=4, train_per_class=6, val_per_class=1, reference=16,
                         planted=8, workers=1, parallel_ingest=False)  # fmt: skip
    build_demo_data(cfg)
    return out


def test_dedup_job_writes_kept_shards_and_audit(mini_demo, tmp_path):
    raw = mini_demo / "raw"
    result = run_dedup(  # manifest: the kept shards, checked from disk below too
        DedupJobConfig(reference=str(raw / "reference"), pool=str(raw / "train"),
                       out=str(tmp_path / "out"), parallel=False, images_per_unit=10),
        progress=False,
    )  # fmt: skip
    lines = dedup_audit(tmp_path / "out")
    removed = result.counts["exact"] + result.counts["phash"] + result.counts["embedding"]
    assert len(lines) == removed > 0
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
    assert kept.num_samples == len(pool) - len(lines) - result.counts["undecodable"]
    # one kept shard per unit of 10 files (32 files), but for units whose images all went
    assert {s.name for s in kept.shards} <= {f"pool-{n:06d}.tar" for n in range(4)}
    full = read_manifest(str(mini_demo / "shards" / "train" / "train.manifest.json"))
    assert kept.classes == full.classes  # class indices unchanged by removals
    assert result.manifest == kept


def test_the_job_on_an_approximate_index_decides_as_exact_search(mini_demo, tmp_path):
    """search=ivf (forced on a small set): the mirror-symmetric IVF is built into the index
    folder, loaded back by the pool side, and every decision equals exact search's."""
    raw = mini_demo / "raw"
    audits = {}
    for search in ("exact", "ivf"):
        out = tmp_path / search
        run_dedup(DedupJobConfig(reference=str(raw / "reference"), pool=str(raw / "train"),
                                 out=str(out), parallel=False, search=search), progress=False)  # fmt: skip
        audits[search] = [(r["source"], r["match"], r["stage"]) for r in dedup_audit(out)]
    assert (tmp_path / "ivf" / "reference-index" / "index" / "ivf.faiss").exists()
    assert audits["ivf"] == audits["exact"] and audits["exact"]


def _kill_mid_run(argv: list[str], markers: Path, after: int) -> None:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while len(list(markers.glob("*.json"))) < after:
            assert proc.poll() is None and time.time() < deadline, "no unit finished in time"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()


def test_a_killed_run_resumes_without_redoing_finished_units(mini_demo, tmp_path):
    """kill -9 after the first units, then a re-run: the finished units are not redone, and the
    outputs equal those of an uninterrupted run (nothing lost, nothing twice)."""
    raw = mini_demo / "raw"
    pool = tmp_path / "pool"  # 5 x the mini pool: 80 units of 2, so the kill lands mid-run
    for copy in range(5):
        for image in sorted((raw / "train").rglob("*.*")):
            target = pool / image.parent.name / f"{copy}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    units = 80
    ref = tmp_path / "uninterrupted"
    run_dedup(DedupJobConfig(reference=str(raw / "reference"), pool=str(pool), out=str(ref),
                             parallel=False, images_per_unit=2), progress=False)  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "jobs/dedup.py", "--reference", str(raw / "reference"), "--pool",
           str(pool), "--serial", "--out", str(out), "--images-per-unit", "2"]  # fmt: skip
    _kill_mid_run(cmd, out / "audit", after=3)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "audit").glob("*.json")}
    assert 3 <= len(first) < units and not (out / "pool.manifest.json").exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{units - len(first)} of {units} pool units filtered now" in again.stdout
    assert all((out / "audit" / n).stat().st_mtime_ns == t for n, t in first.items())  # kept
    assert dedup_audit(out) == dedup_audit(ref)
    same = {"settings"}  # which names the output folder
    assert read_manifest(str(out / "pool.manifest.json")).model_dump(exclude=same) == \
        read_manifest(str(ref / "pool.manifest.json")).model_dump(exclude=same)  # fmt: skip
    for rec in read_manifest(str(ref / "pool.manifest.json")).shards:
        assert (out / rec.name).read_bytes() == (ref / rec.name).read_bytes()


def test_bad_input_is_one_line_and_an_index_is_reused_only_for_its_settings(mini_demo, tmp_path):
    raw = mini_demo / "raw"
    base = {"reference": str(raw / "reference"), "pool": str(raw / "train"), "parallel": False,
            "index": str(tmp_path / "index")}  # fmt: skip
    run_dedup(DedupJobConfig(**base, out=str(tmp_path / "a")), progress=False)
    built = (tmp_path / "index" / "job.json").stat().st_mtime_ns
    run_dedup(DedupJobConfig(**base, out=str(tmp_path / "b")), progress=False)  # reused
    assert (tmp_path / "index" / "job.json").stat().st_mtime_ns == built
    with pytest.raises(UserError, match=r"index .* was built with other settings \(view_side:"
                                        r" 0.85 \(wanted 0.5\)\); expected the same reference"):  # fmt: skip
        run_dedup(DedupJobConfig(**base, out=str(tmp_path / "c"), view_side=0.5), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images under"):
        run_dedup(DedupJobConfig(**{**base, "reference": str(empty)}, out=str(tmp_path / "d")),
                  progress=False)  # fmt: skip
    broken = tmp_path / "broken"
    broken.mkdir()
    shard = (mini_demo / "shards" / "train").glob("train-*.tar").__next__()
    (broken / "pool-000000.tar").write_bytes(shard.read_bytes()[:700])  # cut mid-member
    with pytest.raises(UserError, match=r"shard .*pool-000000.tar is unreadable .*; expected a"
                                        r" complete tar"):  # fmt: skip
        run_dedup(DedupJobConfig(**{**base, "pool": str(broken / "pool-*.tar")},
                                 out=str(tmp_path / "e")), progress=False)  # fmt: skip


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
