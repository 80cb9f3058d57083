"""Checkpoints registered by the trainer's own ranks, on any fsspec URL: what a worker group that
runs several pretraining runs one after another (a sweep's lane, `pipeline.sweep.lanes`) uses,
since Ray Train's registry belongs to the worker group, not to the run. The tests' trainer
without Ray (`pipeline.testing.local`) uses it too.

    <root>/step_00000020/...        every rank's part, as `Checkpointer.save` wrote it
    <root>/step_00000020/COMPLETE   written by rank 0 once every rank's part is in (a barrier)

A checkpoint without COMPLETE (a rank killed mid-write) is never resumed from, and is removed by
the next complete one; the `keep` latest complete checkpoints stay. Run directories written
before (Ray Train registered their checkpoints: `checkpoint_manager_snapshot.json` names the
latest) resume from Ray's latest when they hold none of these.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
import torch.distributed as dist

from pipeline.storage import atomic_write, is_local

COMPLETE = "COMPLETE"
_STEP = re.compile(r"step_(\d+)$")


class CheckpointRegistry:
    def __init__(self, root: str, rank: int, keep: int) -> None:
        self.fs, path = fsspec.core.url_to_fs(root)
        self.root, self.rank, self.keep = path.rstrip("/"), rank, keep

    def _steps(self) -> dict[int, bool]:
        """step -> complete, for every checkpoint directory under the root."""
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return {}
        steps = {}
        for name in names:
            m = _STEP.search(name.rstrip("/"))
            if m:
                steps[int(m.group(1))] = self.fs.exists(f"{self._dir(int(m.group(1)))}/{COMPLETE}")
        return steps

    def _dir(self, step: int) -> str:
        return f"{self.root}/step_{step:08d}"

    def newest(self) -> tuple[int, str] | None:
        """(step, directory) of the latest complete checkpoint, or None."""
        done = [s for s, complete in self._steps().items() if complete]
        if done:
            return max(done), self._dir(max(done))
        try:  # the layout before: Ray Train's registry
            snapshot = json.loads(self.fs.cat_file(f"{self.root}/checkpoint_manager_snapshot.json"))
            latest = snapshot["latest_checkpoint_result"]
            return int(latest["metrics"]["step"]), f"{self.root}/{latest['checkpoint_dir_name']}"
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return None

    def latest_step(self) -> int | None:
        latest = self.newest()
        return latest[0] if latest else None

    @contextmanager
    def latest(self) -> Iterator[str | None]:
        """The latest complete checkpoint as a local directory (downloaded if remote), or None."""
        latest = self.newest()
        if latest is None:
            yield None
        elif is_local(self.fs):
            yield latest[1]
        else:
            with tempfile.TemporaryDirectory(prefix="nfscale-resume-") as tmp:
                self.fs.get(f"{latest[1]}/", f"{tmp}/", recursive=True)
                yield tmp

    def report(self, step: int, directory: str) -> None:
        """Every rank: its part into the step's directory; rank 0 marks it complete once all
        parts are in, then prunes. A collective."""
        target = self._dir(step)
        local_fs = is_local(self.fs)
        for part in sorted(Path(directory).rglob("*")):
            if not part.is_file():
                continue
            dest = f"{target}/{part.relative_to(directory)}"
            # Locally shutil file by file, not copytree: its shutil.Error folds every OSError
            # into one list, and the stop's line and hint need the first one's errno (full disk).
            if local_fs:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(part, dest)
            else:
                self.fs.put_file(str(part), dest)
        if dist.is_initialized():
            dist.barrier()
        if self.rank == 0:
            atomic_write(self.fs, f"{target}/{COMPLETE}", b"")
            self._prune(step)
        if dist.is_initialized():
            dist.barrier()  # no rank goes on before the checkpoint counts

    def _prune(self, latest: int) -> None:
        steps = self._steps()
        kept = sorted((s for s, complete in steps.items() if complete), reverse=True)[: self.keep]
        for s in steps:
            if s not in kept and s != latest:
                self.fs.rm(self._dir(s), recursive=True)
