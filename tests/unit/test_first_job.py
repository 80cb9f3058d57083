"""The first `ray job submit` without a cluster: a job run by an interpreter that lacks the
project's dependencies, and relative paths in Ray's copy of the working directory, each say so
in one line before anything starts. (The whole README section, `make head` to `make
head-stop`: tests/e2e/test_first_job_on_a_local_head.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from pipeline.config import load_config
from pipeline.interpreter import DEPENDENCIES
from pipeline.train.config import PretrainConfig
from pipeline.train.driver.launch import preflight

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_dependencies_are_pyprojects():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in declared}
    assert set(DEPENDENCIES.values()) == names


def test_a_job_run_by_a_python_without_the_dependencies_says_so_first(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
                   check=True, timeout=120)  # fmt: skip
    bare = tmp_path / "bare" / "bin" / "python"
    # Ray puts the job's working directory on PYTHONPATH: `pipeline` imports, its deps do not
    out = subprocess.run([str(bare), "jobs/pretrain.py"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bare} lacks the project's dependencies"
                                                    " (missing: torch, deepspeed, ray, fsspec")  # fmt: skip
    assert "`make head`" in lines[0]


def _ray_copy(tmp_path: Path) -> Path:
    """A folder named like Ray's copy of a job's working directory, with the repository's
    configs/ (what `ray job submit --working-dir .` uploads) and without data/ or runs/."""
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    (copy / "configs").symlink_to(ROOT / "configs")
    return copy


def test_relative_paths_in_rays_copy_of_the_working_directory_are_one_line(
    tmp_path, tiny_data, monkeypatch
):
    copy = _ray_copy(tmp_path)

    def job(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "jobs" / "pretrain.py"), *args],
                              cwd=copy, capture_output=True, text=True, timeout=300)  # fmt: skip

    out = job()  # the default config: data/demo/... is not in the copy
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(
        "error: data.train='data/demo/shards/train' is relative, and this job runs in Ray's"
        f" copy of the working directory ({copy}), which `ray job submit` uploads without data/"
        " and runs/; it is not there; expected an absolute path or a gs:// / s3:// URL"
    )
    data = [f"data.train={tiny_data / 'train'}", f"data.val={tiny_data / 'val'}"]
    out = job(*data)  # inputs absolute, run.dir still relative: it would go with the copy
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: run.dir='runs/pretrain/nano' is relative")
    assert "what is written there is deleted with the copy" in out.stderr
    assert not (copy / "runs").exists()
    monkeypatch.chdir(copy)  # absolute paths pass the same check (preflight starts no Ray)
    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml",
                      [*data, f"run.dir={tmp_path / 'run'}"])  # fmt: skip
    assert preflight(cfg).run.dir == str(tmp_path / "run")
