"""Typed configuration of the chain (configs/demo.yaml, configs/fashion_mnist.yaml): where it
writes, its data, and the sweep and fine-tune configs it runs with the chain's own paths filled
in."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.config import Section
from pipeline.data.demo_set import DemoDataConfig
from pipeline.data.fashion_mnist import FashionMnistConfig


class ChainConfig(Section):
    out: str = "runs/demo"  # dedup/, sweep/ (points, results.csv, mlflow.db), finetune/, report/
    data: DemoDataConfig = Field(default_factory=DemoDataConfig)
    # Set: the chain runs on Fashion-MNIST's real photos instead of the generated demo data
    # (configs/fashion_mnist.yaml); it has no reference set, so there is no dedup stage.
    real: FashionMnistConfig | None = None
    sweep_config: str = "configs/sweep/nano.yaml"
    sweep: dict[str, Any] = Field(default_factory=dict)  # merged onto sweep_config
    finetune_config: str = "configs/finetune/nano.yaml"
    finetune: dict[str, Any] = Field(default_factory=dict)  # merged onto finetune_config
    bootstrap: int = Field(200, ge=0)  # report: bootstrap resamples for the intervals
