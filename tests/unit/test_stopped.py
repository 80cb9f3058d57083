"""The one line a stopped or failed run ends with (pipeline/train/driver/stopped.py), from Ray's own
exception types and the run's checkpoint registry (or the snapshot Ray Train wrote for run
directories from before it); the end-to-end runs that produce them
(non-finite steps, a full disk) are in `make chaos` (tests/chaos/test_pretrain_faults.py)."""

import errno
import json

import pytest
from ray.train import ControllerError, WorkerGroupError

from pipeline.train.driver import stopped


def _snapshot(run_dir, step: int) -> None:
    """What Ray Train's registry left in run directories written before ours."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint_manager_snapshot.json").write_text(json.dumps({
        "ray_version": "2.60.0", "latest_checkpoint_result": {
            "checkpoint_dir_name": "checkpoint_x", "metrics": {"step": step}}}))  # fmt: skip


def _registered(run_dir, step: int, complete: bool = True) -> None:
    folder = run_dir / "checkpoints" / f"step_{step:08d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "COMPLETE").touch()


@pytest.mark.parametrize("layout", ["registry", "ray_snapshot"])
def test_a_full_disk_after_rays_restarts_is_one_line_with_the_intact_checkpoint(tmp_path, layout):
    if layout == "registry":
        _registered(tmp_path, 8)
        _registered(tmp_path, 10)
        _registered(tmp_path, 12, complete=False)  # killed mid-write: never counts
    else:
        _snapshot(tmp_path, 10)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/disk/run/checkpoints/x")
        except OSError as e:
            raise RuntimeError("persisting the checkpoint failed") from e
    except RuntimeError as wrapped:
        error = WorkerGroupError("rank 1 failed", {1: wrapped})
    line = stopped.failure_reason(error, str(tmp_path), retries=3)
    assert line == (
        "training failed after 3 restarts: OSError: [Errno 28] No space left on device:"
        f" '/disk/run/checkpoints/x'; the latest complete checkpoint (step 10) under {tmp_path}"
        "/checkpoints is intact; free space on that disk, then launch again to resume"
    )
    assert "\n" not in line


def test_a_controller_error_before_any_checkpoint(tmp_path):
    error = ControllerError(PermissionError(errno.EACCES, "Permission denied", "/ro/run"))
    line = stopped.failure_reason(error, str(tmp_path), retries=3)
    assert line.startswith("training failed after 0 restarts: PermissionError: [Errno 13]")
    assert line.endswith("no checkpoint was complete yet; make run.dir writable, then launch"
                         " again to resume")  # fmt: skip


def test_an_exception_chain_cycle_ends(tmp_path):
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    assert stopped.root_cause(WorkerGroupError("x", {0: a})) is b


def test_a_stop_record_is_read_back_and_cleared(tmp_path):
    assert stopped.reason(str(tmp_path)) is None
    stopped.record(str(tmp_path), "stopped at step 10: ...", 10)
    assert stopped.reason(str(tmp_path)) == "stopped at step 10: ..."
    stopped.clear(str(tmp_path))
    assert stopped.reason(str(tmp_path)) is None
