"""One micro-batch's work: its dropout seeding, forward and backward (plain SGD or SAM's step
variant). The trainer calls these; tests call `micro_step` on an engine directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.optim.sam import ascent_count, perturbed


def seed_draws(seed: int, device: torch.device) -> None:
    """Seeds the next micro-batch's dropout and stochastic-depth draws: the CPU generator and
    this worker's GPU only (`torch.manual_seed` also walks every other accelerator backend:
    75 us against 1 us per call, a share of a short step)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def micro_step(engine, images: torch.Tensor, labels: torch.Tensor, tc) -> tuple:
    """Forward and backward of one micro-batch (update on the accumulation boundary); the loss
    at the current weights and the AGC stats of an update. With SAM (SPEC §5) the backward runs
    at w + e, e from this rank's own gradient on the first ascent_fraction (a step variant)."""

    def loss_of(model, x, y):
        return F.cross_entropy(model(x).float(), y, label_smoothing=tc.label_smoothing)

    if not tc.sam.rho:
        loss = loss_of(engine.engine, images, labels)
        return loss.detach(), engine.micro_step(loss)
    k = ascent_count(len(labels), tc.sam.ascent_fraction)
    weights = [p for p in engine.module.parameters() if p.requires_grad]
    # The ascent runs on the bare module: no engine hooks, no communication.
    with perturbed(
        weights, lambda: loss_of(engine.module, images[:k], labels[:k]), tc.sam.rho
    ) as loss:
        engine.backward(loss_of(engine.engine, images, labels))
    return loss, engine.step()
