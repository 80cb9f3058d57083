"""Optimisation pieces: AGC, parameter groups (SAM and schedules join in later stages)."""

from pipeline.optim.agc import adaptive_grad_clip_, unitwise_sq_norms
from pipeline.optim.param_groups import agc_parameters, weight_decay_groups

__all__ = ["adaptive_grad_clip_", "agc_parameters", "unitwise_sq_norms", "weight_decay_groups"]
