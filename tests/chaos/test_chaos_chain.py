"""The chain on a cluster, the way users run it: every stage a `ray job submit` (through the
Makefile's `make submit-<stage>`) to a Ray head on loopback, with the data on gs:// in the GCS
emulator behind a proxy that answers 1 request in 10 with a 5xx and stalls 1 in 25.

ingest (pool, held-out, reference) -> dedup -> sweep (2 points) -> fine-tune of the best point
-> report (on gs:// too). Every shard must arrive intact (its bytes match the manifest's sha256), the kept pool
must be the pool less the audit, and every stage must finish despite the faults.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import fsspec

from pipeline.data.demo_set import DemoDataConfig, build_demo_data
from pipeline.data.manifest import Manifest
from pipeline.sweep.results import ResultsTable
from tests.ray_head import loopback_head
from tests.storage_servers import faulty_proxy, gcs_emulator

ROOT = Path(__file__).resolve().parents[2]
POINT = ("{data: {train: gs://bucket/dedup, train_prefix: pool, val: gs://bucket/shards/val,"
         " val_prefix: val, resolution: 32, eval_resolution: 32, val_samples: 16},"
         " train: {global_batch: 8, micro_batch: 4, checkpoint: {every: 2}, eval_every: 0},"
         " cluster: {workers: 1}}")  # fmt: skip


def _submit(stage: str, args: list[str], env: dict, dashboard: str) -> str:
    out = subprocess.run(
        ["make", "--no-print-directory", f"submit-{stage}", f"RAY_DASHBOARD={dashboard}",
         f"ARGS={' '.join(args)}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert out.returncode == 0 and "succeeded" in out.stdout, (
        f"submit-{stage}: " + out.stdout[-3000:] + out.stderr[-2000:]
    )
    return out.stdout


def _intact(fs, root: str, prefix: str) -> int:
    """Every shard's bytes on the store match its manifest's sha256; returns the sample count."""
    manifest = Manifest.model_validate_json(fs.cat_file(f"{root}/{prefix}.manifest.json"))
    for shard in manifest.shards:
        data = fs.cat_file(f"{root}/{shard.name}")
        assert hashlib.sha256(data).hexdigest() == shard.sha256, shard.name
    return manifest.num_samples


def test_stage_jobs_on_gs_through_a_faulty_proxy(tmp_path):
    raw = build_demo_data(DemoDataConfig(out=str(tmp_path / "data"), classes=4, train_per_class=12,
                                         val_per_class=4, reference=8, planted=4, size=40,
                                         workers=1, parallel_ingest=False)) / "raw"  # fmt: skip
    with gcs_emulator("bucket"):
        upstream = os.environ["STORAGE_EMULATOR_HOST"]
        proxied = faulty_proxy(upstream, fail_every=10, stall_every=25, stall_s=3)
        with proxied as (proxy, n), loopback_head(STORAGE_EMULATOR_HOST=proxy,
                                                  NFSCALE_STORAGE_STALL_S="1") as head:  # fmt: skip
            dashboard, env = head
            for split in ("train", "val", "reference"):
                _submit("ingest", [f"input={raw / split}", f"output=gs://bucket/shards/{split}",
                                   f"prefix={split}"], env, dashboard)  # fmt: skip
            _submit("dedup", ["--reference", "gs://bucket/shards/reference/reference-*.tar",
                              "--pool", "gs://bucket/shards/train/train-*.tar",
                              "--out", "gs://bucket/dedup", "--prefix", "pool"],
                    env, dashboard)  # fmt: skip
            sweep_dir = tmp_path / "sweep"
            _submit("sweep", [f"sweep.dir={sweep_dir}", "'sweep.models=[nfnet_nano0]'",
                              "'sweep.epochs=[0.5, 1.0]'", f"'pretrain={POINT}'"],
                    env, dashboard)  # fmt: skip
            rows = ResultsTable(str(sweep_dir / "results.csv")).latest()
            best = min(rows.values(), key=lambda r: r.heldout_loss)
            _submit("finetune", [f"init.from_run={best.run_dir}",
                                 f"run.dir={tmp_path / 'finetune'}",
                                 "data.train=gs://bucket/dedup", "data.train_prefix=pool",
                                 "data.val=gs://bucket/shards/val", "data.val_prefix=val",
                                 "data.resolution=32", "data.eval_resolution=40",
                                 "data.val_samples=16", "train.epochs=0.5",
                                 "train.global_batch=16", "train.micro_batch=4"],
                    env, dashboard)  # fmt: skip
            _submit("report", ["--results", str(sweep_dir / "results.csv"),
                               "--out", "gs://bucket/report", "--bootstrap", "20"],
                    env, dashboard)  # fmt: skip
        fs = fsspec.filesystem("gs", skip_instance_cache=True)  # the emulator, no proxy
        pool = _intact(fs, "bucket/shards/train", "train")
        assert _intact(fs, "bucket/shards/val", "val") == 16
        assert _intact(fs, "bucket/shards/reference", "reference") == 8
        kept = _intact(fs, "bucket/dedup", "pool")
        audit = fs.cat_file("bucket/dedup/duplicates.jsonl").decode().splitlines()
        report = set(fs.ls("bucket/report", detail=False))
    assert n.failed >= 5 and n.stalled >= 2, vars(n)  # the faults did happen
    assert pool == 4 * 12 + 4 and len(audit) >= 4 and kept == pool - len(audit)  # 4 planted
    assert len(rows) == 2 and all(r.finished for r in rows.values())
    for r in rows.values():
        summary = json.loads((Path(r.run_dir) / "final" / "summary.json").read_text())
        assert summary["images_seen"] > 0 and summary["heldout_loss"] < 10
    finetune = json.loads((tmp_path / "finetune" / "final" / "summary.json").read_text())
    assert finetune["init_from"].startswith(best.run_dir) and finetune["eval_resolution"] == 40
    assert {"bucket/report/report.html", "bucket/report/fit.json"} <= report
