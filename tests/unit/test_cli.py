"""Entry points as users run them: subprocesses, exit codes, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_summary_prints_params_and_macs():
    out = run("-m", "pipeline.models.summary", "nfnet_f0", "--res", "256")
    assert out.returncode == 0, out.stderr
    assert "nfnet_f0: 71.49M params (71,489,284), 12.38 GMACs at 256px" in out.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["nfnet_f9"], "error: unknown model 'nfnet_f9'"),
        (["nfnet_f0", "--res", "2"], "error: --res must be >= 8 px, got 2"),
    ],
)
def test_summary_bad_input(args, message):
    out = run("-m", "pipeline.models.summary", *args)
    assert out.returncode == 2 and out.stderr.strip().startswith(message)
    assert len(out.stderr.strip().splitlines()) == 1


def test_quickstart_shows_loss_falling():
    out = run("jobs/quickstart.py", "steps=12", "warmup_steps=2", "batch=16")
    assert out.returncode == 0, out.stderr
    assert "held-out loss" in out.stdout and out.stdout.count("\n") >= 5


@pytest.mark.parametrize(
    "override,message",
    [
        ("stepz=3", "error: unknown config key 'stepz'"),
        ("batch=0", "error: bad config value batch=0"),
        ("model=nfnet_x", "error: bad config value model='nfnet_x': unknown model"),
    ],
)
def test_quickstart_bad_input_is_one_line(override, message):
    out = run("jobs/quickstart.py", override)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(message) and len(out.stderr.strip().splitlines()) == 1


def test_ingest_job_and_its_bad_input(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "raw" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20), "red" if c == "a" else "blue").save(
            tmp_path / "raw" / c / "x.png"
        )
    out = run(
        "jobs/ingest.py",
        f"input={tmp_path / 'raw'}",
        f"output={tmp_path / 'out'}",
        "parallel=false",
    )
    assert out.returncode == 0, out.stderr
    assert "ingest: 2 samples in 1 shards" in out.stdout
    for args, message in [
        ([f"output={tmp_path}"], "error: missing config key 'input'"),
        ([f"input={tmp_path / 'nope'}", f"output={tmp_path}"], "does not exist"),
        ([f"input={tmp_path / 'raw'}", f"output={tmp_path}", "shard_bytes=1"], "shard_bytes=1"),
    ]:
        bad = run("jobs/ingest.py", *args)
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_importing_the_library_changes_nothing_and_jobs_need_no_path_edits(tmp_path):
    """`import pipeline...` leaves fsspec's config and the imported modules alone (storage
    defaults are the jobs' and workers' to set), and the jobs import the library as installed:
    run from another folder, with no sys.path edit of their own."""
    probe = ("import sys, fsspec; import pipeline.models, pipeline.train.config;"
             " print('aiohttp' in sys.modules, 'gs' in fsspec.config.conf)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr
    for job in sorted((ROOT / "jobs").glob("*.py")):
        assert "sys.path" not in job.read_text(), job.name
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "pretrain.py"), "--dry-run",
                          "--config", str(ROOT / "configs" / "pretrain" / "nano.yaml"),
                          "data.expected_samples=1000"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "nfnet_nano0" in out.stdout, out.stderr[-2000:]
