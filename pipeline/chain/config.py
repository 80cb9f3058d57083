"""Typed configuration of the chain (configs/demo.yaml): where it writes, the demo data, and
the sweep and fine-tune configs it runs with the chain's own paths filled in."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.config import Section
from pipeline.data.demo_set import DemoDataConfig


class ChainConfig(Section):
    out: str = "runs/demo"  # dedup/, sweep/ (points, results.csv, mlflow.db), finetune/, report/
    data: DemoDataConfig = Field(default_factory=DemoDataConfig)
    sweep_config: str = "configs/sweep/nano.yaml"
    sweep: dict[str, Any] = Field(default_factory=dict)  # merged onto sweep_config
    finetune_config: str = "configs/finetune/nano.yaml"
    finetune: dict[str, Any] = Field(default_factory=dict)  # merged onto finetune_config
    bootstrap: int = Field(200, ge=0)  # report: bootstrap resamples for the intervals
