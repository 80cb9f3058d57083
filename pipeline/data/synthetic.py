"""Procedural labelled images, generated on the fly (no files): for smoke runs and the early demo.

Class k is a family of oriented gratings with its own orientation, frequency and colour; every
sample draws its own phase, contrast, brightness, a random occluding blob and pixel noise, so the
task is learnable but not trivial. Deterministic in (seed, index).
"""

from __future__ import annotations

import math

import torch


class SyntheticImages:
    def __init__(self, num_classes: int = 10, res: int = 64, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.res, self.seed = num_classes, res, seed
        g = torch.Generator().manual_seed(seed)
        self.angle = torch.rand(num_classes, generator=g) * math.pi
        self.freq = 2.0 + torch.rand(num_classes, generator=g) * 6.0
        self.colour = torch.rand(num_classes, 3, generator=g) * 0.8 + 0.2
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij"
        )
        self._grid = (xs, ys)

    def batch(self, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index``: images [size, 3, res, res] (about zero mean) and labels."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        labels = torch.randint(self.num_classes, (size,), generator=g)
        xs, ys = self._grid
        angle = self.angle[labels] + torch.randn(size, generator=g) * 0.15
        proj = (
            xs[None] * torch.cos(angle)[:, None, None] + ys[None] * torch.sin(angle)[:, None, None]
        )
        phase = torch.rand(size, 1, 1, generator=g) * 2 * math.pi
        wave = torch.sin(proj * self.freq[labels][:, None, None] * math.pi + phase)
        contrast = 0.5 + torch.rand(size, 1, 1, 1, generator=g)
        images = wave[:, None] * self.colour[labels][:, :, None, None] * contrast
        images = images + (torch.rand(size, 3, 1, 1, generator=g) - 0.5)  # lighting / colour cast
        cx, cy = (torch.rand(2, size, 1, 1, generator=g) * 2 - 1).unbind(0)
        blob = ((xs[None] - cx) ** 2 + (ys[None] - cy) ** 2 < 0.15).float()[:, None]
        images = images * (1 - blob) + blob * torch.rand(size, 3, 1, 1, generator=g)
        images = images + 0.3 * torch.randn(images.shape, generator=g)
        return images, labels
