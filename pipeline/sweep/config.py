"""Typed configuration of a sweep (configs/sweep/*.yaml) and the pretraining config of each point.

    sweep:     where it writes, the grid (models x epochs x lr_multipliers), LR search, concurrency
    base:      the pretraining config every point starts from (configs/pretrain/*.yaml)
    pretrain:  keys merged onto `base` for every point (nested, like the base file)

A point's own keys come last: run.dir=<sweep.dir>/runs/<point>, model.name, train.epochs,
train.schedule.base_lr = base_lr x multiplier, and the sweep's MLflow store and parent run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import (
    ConfigError,
    Section,
    build_config,
    deep_merge,
    format_validation_error,
    read_yaml,
)
from pipeline.models import list_models
from pipeline.train.components import ScheduleSection
from pipeline.train.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


def read_config_yaml(path: str) -> dict[str, Any]:
    """A config named by a URL, an existing path, or a path relative to the repository (so a
    sweep or the demo finds configs/... from any working directory)."""
    local = "://" in path or Path(path).exists()
    return read_yaml(path if local else str(ROOT / path))


class SweepSection(Section):
    dir: str = "runs/sweep/nano"  # results.csv, runs/<point>/, mlflow.db, mlflow_run_id
    experiment: str = "sweep"
    models: list[str] = Field(default_factory=lambda: ["nfnet_nano0", "nfnet_nano1"], min_length=1)
    epochs: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=1)
    lr_multipliers: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    # LR search (the paper: the best LR falls slowly and monotonically with size and budget):
    # per point, the previous point's best multiplier and half of it; lr_multipliers[0] starts.
    lr_search: bool = False
    max_concurrent: int = Field(0, ge=0)  # points at once; 0: as many as the cluster fits
    mlflow_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///<dir>/mlflow.db

    @field_validator("models")
    @classmethod
    def _known(cls, models: list[str]) -> list[str]:
        unknown = [m for m in models if m not in list_models()]
        if unknown:
            raise ValueError(f"unknown model {unknown[0]}; expected names from {list_models()}")
        if len(set(models)) != len(models):
            raise ValueError("models repeat; expected each model once")
        return models

    @field_validator("epochs", "lr_multipliers")
    @classmethod
    def _positive_distinct(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values) or len(set(values)) != len(values):
            raise ValueError("expected distinct values > 0")
        return values


class SweepConfig(Section):
    sweep: SweepSection = Field(default_factory=SweepSection)
    base: str = "configs/pretrain/nano.yaml"
    pretrain: dict[str, Any] = Field(default_factory=dict)

    def base_dict(self) -> dict[str, Any]:
        return deep_merge(read_config_yaml(self.base), self.pretrain)

    @model_validator(mode="after")
    def _pretrain_validates(self) -> SweepConfig:
        """`pretrain` merged onto `base` is a pretraining config (the points add only run.dir,
        the model, the epochs and the LR): a bad key fails when the sweep config loads."""
        try:
            PretrainConfig.model_validate(self.base_dict())
        except ValidationError as e:
            raise ValueError(
                f"pretrain (onto {self.base}): {format_validation_error(PretrainConfig, e).removeprefix('bad config: ')}"
            ) from None
        return self


def point_config(
    base: dict[str, Any],
    run_dir: str,
    model: str,
    epochs: float,
    lr_multiplier: float,
    mlflow_uri: str | None,
    parent_run: str | None,
) -> PretrainConfig:
    """The pretraining config of one point; a bad key or value names the point."""
    schedule = base.get("train", {}).get("schedule", {})
    base_lr = schedule.get("base_lr", ScheduleSection().base_lr)
    own = {
        "run": {"dir": run_dir},
        "tracking": {"uri": mlflow_uri, "parent": parent_run},
        "model": {"name": model},
        "train": {"epochs": epochs, "schedule": {"base_lr": base_lr * lr_multiplier}},
    }
    try:
        return build_config(PretrainConfig, deep_merge(base, own))
    except ConfigError as e:
        raise ConfigError(f"sweep point {model} x {epochs:g} epochs: {e}") from None
