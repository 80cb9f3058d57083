"""A run that stops itself leaves `<run.dir>/stopped.json`: its workers return normally, so Ray
does not retry what would fail the same way again, and the driver turns the record into one
line for the user. The next launch of the run directory clears it."""

from __future__ import annotations

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
