"""The sweep's results table: one CSV, append-only, one row per point outcome.

A point that failed and later finished has two rows; the last row of a point is its state
(`latest`). Local files are appended in place (flushed and fsynced per row); object stores
cannot append, so there the table is rewritten whole and atomically (the sweep driver is the
only writer). jobs/report.py reads it as is: it keeps rows whose status is "finished".
"""

from __future__ import annotations

import csv
import io
import os

import fsspec

from pipeline.config import UserError
from pipeline.storage import atomic_write, is_local

COLUMNS = ["model", "params", "epochs", "lr", "images_seen", "flops", "device_hours",
           "heldout_loss", "status", "run_dir", "mlflow_run_id",
           "point", "lr_multiplier", "wall_s", "train_s", "recorded_at", "error"]  # fmt: skip


class ResultsTable:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fs, self.root = fsspec.core.url_to_fs(path)

    def rows(self) -> list[dict[str, str]]:
        if not self.fs.exists(self.root):
            return []
        text = self.fs.cat_file(self.root).decode()
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames and reader.fieldnames != COLUMNS:
            raise UserError(
                f"results table {self.path} has columns {reader.fieldnames}; expected {COLUMNS}"
                " (a table from another tool or version: give the sweep a new sweep.dir)"
            )
        return list(reader)

    def latest(self) -> dict[str, dict[str, str]]:
        """Each point's last row."""
        return {row["point"]: row for row in self.rows()}

    def append(self, row: dict) -> None:
        line = io.StringIO()
        writer = csv.DictWriter(line, COLUMNS, extrasaction="raise")
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
        if is_local(self.fs):
            os.makedirs(os.path.dirname(self.root) or ".", exist_ok=True)
            with open(self.root, "a", newline="") as f:
                if f.tell() == 0:
                    f.write(",".join(COLUMNS) + "\r\n")
                f.write(line.getvalue())
                f.flush()
                os.fsync(f.fileno())
            return
        old = self.fs.cat_file(self.root) if self.fs.exists(self.root) else b""
        head = b"" if old else (",".join(COLUMNS) + "\r\n").encode()
        atomic_write(self.fs, self.root, old + head + line.getvalue().encode())
