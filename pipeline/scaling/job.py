"""The report job: results table -> DIR/fit.json, DIR/report.{md,html}, DIR/*.png; optionally the
folder logged to an MLflow run."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from pydantic import Field, model_validator

from pipeline.config import Section, UserError
from pipeline.scaling.analysis import analyse, assess_fit, summary
from pipeline.scaling.plots import write_figures
from pipeline.scaling.report import write_reports
from pipeline.scaling.table import Columns, read_table
from pipeline.scaling.tracking import log_report_dir
from pipeline.storage import is_local


class ReportJobConfig(Section):
    results: str = Field(description="results table (CSV)")
    out: str = Field(description="output folder (local, or any fsspec URL: gs://, s3://)")
    params_col: str = "params"
    tokens_col: str | None = Field(None, description="data D as given; compute C = 6 N D")
    flops_col: str | None = Field(None, description="compute C as given; D = C / (6 N)")
    loss_col: str = "heldout_loss"
    drop_highest_loss: int = Field(0, ge=0)
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples; 0: no intervals")
    seed: int = 0
    mlflow_run_id: str | None = None
    mlflow_uri: str | None = None

    @model_validator(mode="after")
    def _one_data_source(self) -> ReportJobConfig:
        if self.tokens_col is not None and self.flops_col is not None:
            raise ValueError("tokens_col and flops_col are mutually exclusive; give one")
        return self

    def columns(self) -> Columns:
        """Neither data column named: our sweep table (D = images_seen, C = flops, both as given)."""
        if self.tokens_col is not None:
            return Columns(self.params_col, self.loss_col, tokens=self.tokens_col, flops=None)
        if self.flops_col is not None:
            return Columns(self.params_col, self.loss_col, tokens=None, flops=self.flops_col)
        return Columns(self.params_col, self.loss_col)


def json_safe(value: Any) -> Any:
    """NaN/inf (e.g. a slope interval from two points) -> None: fit.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def run_report(cfg: ReportJobConfig) -> dict:
    """Fit, write the folder, log it to MLflow when a run id is given; returns fit.json's doc."""
    table = read_table(cfg.results, cfg.columns(), cfg.drop_highest_loss)
    analysis = analyse(table, n_boot=cfg.bootstrap, seed=cfg.seed)
    doc = json_safe(summary(analysis))
    doc |= assess_fit(analysis, doc)
    fs, root = fsspec.core.url_to_fs(cfg.out)
    with tempfile.TemporaryDirectory(prefix="nfscale-report-") as tmp:
        out = Path(cfg.out) if is_local(fs) else Path(tmp)  # a remote folder: written, then put
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output folder {cfg.out!r}: {e.strerror}") from None
        (out / "fit.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        figures, omitted = write_figures(analysis, out)
        write_reports(analysis, doc, figures, out, omitted)
        if cfg.mlflow_run_id:
            log_report_dir(out, cfg.mlflow_run_id, tracking_uri=cfg.mlflow_uri)
        if not is_local(fs):
            fs.put([str(f) for f in sorted(out.iterdir())], root.rstrip("/") + "/")
    return doc
