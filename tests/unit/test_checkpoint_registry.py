"""The ranks' own checkpoint registry (pipeline/train/worker/registry.py) on a local folder and
on a remote filesystem (fsspec's memory://, which goes through the same put/get calls as gs://):
only complete checkpoints count, the newest `keep` stay, a remote one resumes from a download."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from pipeline.train.worker.registry import COMPLETE, CheckpointRegistry


def _part(tmp_path, step: int):
    folder = tmp_path / f"scratch{step}"
    (folder / "deepspeed").mkdir(parents=True)
    (folder / "deepspeed" / "rank0.pt").write_bytes(bytes([step]) * 8)
    (folder / "train_state.json").write_text(f'{{"step": {step}}}')
    return folder


@pytest.mark.parametrize("where", ["local", "remote"])
def test_complete_checkpoints_count_the_newest_are_kept_and_resume(tmp_path, where):
    root = str(tmp_path / "ckpt") if where == "local" else "memory://registry-test/ckpt"
    fs, path = fsspec.core.url_to_fs(root)
    registry = CheckpointRegistry(root, rank=0, keep=2)
    assert registry.latest_step() is None
    with registry.latest() as found:
        assert found is None
    fs.makedirs(f"{path}/step_00000009/deepspeed", exist_ok=True)  # killed mid-write: no mark
    fs.pipe(f"{path}/step_00000009/deepspeed/rank0.pt", b"half")
    for step in (2, 4, 6):
        registry.report(step, str(_part(tmp_path, step)))
    assert registry.latest_step() == 6  # step 9 never completed
    left = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    assert left == ["step_00000004", "step_00000006"]  # the incomplete one and step 2 are gone
    assert fs.exists(f"{path}/step_00000006/{COMPLETE}")
    with registry.latest() as found:
        assert found is not None and (where == "local") == found.startswith(str(tmp_path))
        assert (Path(found) / "deepspeed" / "rank0.pt").read_bytes() == bytes([6]) * 8
        assert (Path(found) / "train_state.json").read_text() == '{"step": 6}'
    if where == "remote":
        fs.rm(path, recursive=True)
