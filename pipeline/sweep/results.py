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
from typing import Literal

import fsspec
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.config import UserError, format_validation_error
from pipeline.storage import atomic_write, is_local


class PointResult(BaseModel):
    """One row: a point's outcome (fields in the table's column order; an empty cell is None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = ""
    params: int | None = None
    epochs: float | None = None
    lr: float | None = None
    images_seen: int | None = None
    flops: float | None = None
    device_hours: float | None = None
    heldout_loss: float | None = None
    status: Literal["finished", "failed"]
    run_dir: str = ""
    mlflow_run_id: str | None = None
    point: str
    lr_multiplier: float | None = None
    wall_s: float | None = None
    train_s: float | None = None
    recorded_at: str = ""
    error: str = ""
    heldout_top1: float | None = None  # columns added later go last: older tables stay readable

    @property
    def finished(self) -> bool:
        return self.status == "finished"


COLUMNS = list(PointResult.model_fields)


class ResultsTable:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fs, self.root = fsspec.core.url_to_fs(path)

    def rows(self) -> list[PointResult]:
        if not self.fs.exists(self.root):
            return []
        text = self.fs.cat_file(self.root).decode()
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames and reader.fieldnames != COLUMNS[: len(reader.fieldnames)]:
            raise UserError(
                f"results table {self.path} has columns {reader.fieldnames}; expected {COLUMNS}"
                " (a table from another tool or version: give the sweep a new sweep.dir)"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(PointResult.model_validate({k: v for k, v in row.items() if v != ""}))
            except ValidationError as e:
                why = format_validation_error(PointResult, e).removeprefix("bad config ")
                raise UserError(f"results table {self.path}, line {line}: {why}") from None
        return rows

    def latest(self) -> dict[str, PointResult]:
        """Each point's last row."""
        return {row.point: row for row in self.rows()}

    def _upgrade(self) -> None:
        """A table written before the last columns were added gets them (empty), once."""
        if not self.fs.exists(self.root):
            return
        text = self.fs.cat_file(self.root).decode()
        header = text.split("\n", 1)[0].strip().split(",")
        if header == COLUMNS or not text.strip():
            return
        rows = self.rows()  # a foreign table is refused here
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.model_dump().items()})
        atomic_write(self.fs, self.root, out.getvalue().encode())

    def append(self, row: PointResult) -> None:
        self._upgrade()
        line = io.StringIO()
        writer = csv.DictWriter(line, COLUMNS, extrasaction="raise")
        writer.writerow({k: "" if v is None else v for k, v in row.model_dump().items()})
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
