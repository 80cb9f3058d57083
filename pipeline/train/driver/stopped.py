"""Why a run stopped, in one line for the user, and where it can go on from.

A run that stops itself (too many non-finite steps in a row) leaves `<run.dir>/stopped.json`:
its workers return normally, so Ray does not retry what would fail the same way again, and the
driver turns the record into the line. The next launch of the run directory clears it. A run
that failed (a full disk, a read-only checkpoint directory, ...) after Ray's retries is named
by its root cause and its latest complete checkpoint.
"""

from __future__ import annotations

import errno
import json

import fsspec

from pipeline.storage import atomic_write

STOPPED = "stopped.json"


def _path(run_dir: str):
    return fsspec.core.url_to_fs(f"{run_dir.rstrip('/')}/{STOPPED}")


def record(run_dir: str, reason: str, step: int) -> None:
    fs, path = _path(run_dir)
    atomic_write(fs, path, json.dumps({"reason": reason, "step": step}).encode())


def reason(run_dir: str) -> str | None:
    fs, path = _path(run_dir)
    try:
        return json.loads(fs.cat_file(path))["reason"]
    except FileNotFoundError:
        return None


def clear(run_dir: str) -> None:
    fs, path = _path(run_dir)
    if fs.exists(path):
        fs.rm(path)


def latest_checkpoint_step(run_dir: str) -> int | None:
    """The step of the run's latest complete checkpoint (every rank's part), or None."""
    from pipeline.train.worker.context import run_registry  # torch: on a failure only

    return run_registry(run_dir, 0, 1).latest_step()


def root_cause(error: BaseException) -> BaseException:
    """The first worker's exception, unwrapped from Ray's and chained errors to its origin."""
    failures = getattr(error, "worker_failures", None) or {}
    error = next(iter(failures.values()), None) or getattr(error, "controller_failure", error)
    seen = {id(error)}
    while True:
        inner = getattr(error, "cause", None) or error.__cause__ or error.__context__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


_STORAGE_HINT = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "raise the disk quota",
    errno.EACCES: "make run.dir writable",
    errno.EPERM: "make run.dir writable",
    errno.EROFS: "put run.dir on a writable filesystem",
}


def failure_reason(error: BaseException, run_dir: str, retries: int) -> str:
    cause = root_cause(error)
    what = " ".join(f"{type(cause).__name__}: {cause}".split())[:400]
    step = latest_checkpoint_step(run_dir)
    kept = (
        f"the latest complete checkpoint (step {step}) under {run_dir}/checkpoints is intact"
        if step is not None
        else "no checkpoint was complete yet"
    )
    hint = _STORAGE_HINT.get(getattr(cause, "errno", None))
    todo = f"{hint}, then launch again to resume" if hint else "launch again to resume"
    restarts = retries if getattr(error, "worker_failures", None) else 0  # a controller error
    return f"training failed after {restarts} restarts: {what}; {kept}; {todo}"
