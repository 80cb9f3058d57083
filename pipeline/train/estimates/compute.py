"""Compute accounting for scaling studies: training FLOPs, device-hours and an MFU estimate.

Training FLOPs per image ~ 3 x forward FLOPs = 6 x forward MACs at the train resolution (SPEC
§8), counted once on the meta device (no memory, no real compute), so F7+ costs nothing here.
"""

from __future__ import annotations

import torch

from pipeline.models import create_model
from pipeline.models.summary import count_macs

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, for the MFU estimate.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def train_flops_per_image(model_name: str, num_classes: int, resolution: int) -> float:
    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes)
    return 6.0 * count_macs(model, resolution)


def peak_tflops(configured: float | None, use_gpu: bool) -> float | None:
    """Per-worker peak: the configured value, else the table's entry for this GPU, else None."""
    if configured is not None:
        return configured
    if use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return None


def mfu(flops_per_s: float, workers: int, peak: float | None) -> float | None:
    return flops_per_s / (workers * peak * 1e12) if peak else None
