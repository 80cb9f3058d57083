"""Read a results table (CSV) into the arrays the fits use: params N, data D, compute C, loss L.

Our sweep table has columns model, params, epochs, lr, images_seen, flops, device_hours,
heldout_loss, status, run_dir, mlflow_run_id; any other CSV works given its column names.
Rows count when status == "finished" (if there is a status column) and the loss is finite.

Data and compute, by the columns named:
- tokens and flops: D and C as given (our sweep: images_seen and flops; 6N per image is a
  transformer rule that does not hold for convnets, so C is never derived when it was measured);
- tokens only: C = 6 N D;
- flops only: D = C / (6 N) (the Chinchilla CSV).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

import fsspec
import numpy as np

from pipeline.config import UserError


@dataclass(frozen=True)
class Columns:
    params: str = "params"
    loss: str = "heldout_loss"
    tokens: str | None = "images_seen"
    flops: str | None = "flops"
    model: str = "model"  # optional columns: used when present
    lr: str = "lr"
    epochs: str = "epochs"
    status: str = "status"


@dataclass
class RunTable:
    path: str
    header: list[str]
    rows: list[dict[str, str]]  # the rows used, as read
    params: np.ndarray
    data: np.ndarray
    compute: np.ndarray
    loss: np.ndarray
    models: list[str]  # the model column, or N formatted when there is none
    lr: np.ndarray | None = None
    epochs: np.ndarray | None = None
    data_source: str = ""
    compute_source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.loss.size)


def _number(path: str, line: int, column: str, raw: str, positive: bool = True) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UserError(
            f"{path} line {line}: column {column!r} is {raw!r}; expected a number"
        ) from None
    if positive and not (np.isfinite(value) and value > 0):
        raise UserError(f"{path} line {line}: column {column!r} is {raw!r}; expected > 0")
    return value


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    fs, p = fsspec.core.url_to_fs(path)  # a local path or any fsspec URL (gs://, s3://)
    if not fs.isfile(p):
        raise UserError(f"results table {path!r} not found; expected a CSV file")
    try:
        with fs.open(p, "rt", newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets' BOM
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [(i + 2, row) for i, row in enumerate(reader)]  # line 1 is the header
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(
            f"results table {path!r} is not a readable CSV ({e}); expected UTF-8 CSV"
        ) from None
    if not header:
        raise UserError(f"results table {path!r} is empty; expected a CSV with a header row")
    return header, rows


def read_table(path: str, columns: Columns | None = None, drop_highest_loss: int = 0) -> RunTable:
    """Usable rows of ``path``; every problem is a one-line ``UserError`` naming it."""
    cols = columns or Columns()
    if cols.tokens is None and cols.flops is None:
        raise UserError("name a data column (tokens) or a compute column (flops); got neither")
    header, raw_rows = _read_csv(path)
    needed = {"params": cols.params, "loss": cols.loss, "tokens": cols.tokens, "flops": cols.flops}
    for role, name in needed.items():
        if name is not None and name not in header:
            raise UserError(
                f"results table {path!r} has no {role} column {name!r} (--{role}-col); "
                f"columns are {header}"
            )
    skipped = {"not finished": 0, "non-finite loss": 0, "highest loss dropped": 0}
    used: list[tuple[int, dict[str, str]]] = []
    for line, row in raw_rows:
        if cols.status in header and (row.get(cols.status) or "").strip() != "finished":
            skipped["not finished"] += 1
            continue
        raw = (row.get(cols.loss) or "").strip()
        loss = _number(path, line, cols.loss, raw, positive=False) if raw else float("nan")
        if not np.isfinite(loss):
            skipped["non-finite loss"] += 1
            continue
        used.append((line, row))
    if drop_highest_loss < 0 or (used and drop_highest_loss >= len(used)):
        raise UserError(
            f"drop_highest_loss={drop_highest_loss}; expected 0 <= K < {len(used)} usable rows"
        )
    if drop_highest_loss:
        by_loss = sorted(used, key=lambda lr: float(lr[1][cols.loss]))
        used = sorted(by_loss[:-drop_highest_loss], key=lambda lr: lr[0])
        skipped["highest loss dropped"] = drop_highest_loss

    def column(name: str, positive: bool = True) -> np.ndarray:
        return np.array(
            [
                _number(path, line, name, (row.get(name) or "").strip(), positive)
                for line, row in used
            ]
        )

    params, loss = column(cols.params), column(cols.loss)
    if np.any(loss <= 0):
        raise UserError(f"{path}: column {cols.loss!r} has losses <= 0; expected positive losses")
    data = column(cols.tokens) if cols.tokens else None
    compute = column(cols.flops) if cols.flops else None
    if data is None:
        data, data_source = compute / (6.0 * params), f"{cols.flops} / (6 * {cols.params})"
    else:
        data_source = cols.tokens
    if compute is None:
        compute, compute_source = 6.0 * params * data, f"6 * {cols.params} * {cols.tokens}"
    else:
        compute_source = cols.flops
    has_model = cols.model in header
    models = [
        row[cols.model].strip() if has_model else f"N={float(row[cols.params]):.3g}"
        for _, row in used
    ]
    return RunTable(
        path, header, [row for _, row in used], params, data, compute, loss, models,
        column(cols.lr) if cols.lr in header else None,
        column(cols.epochs) if cols.epochs in header else None,
        data_source, compute_source, skipped,
    )  # fmt: skip
