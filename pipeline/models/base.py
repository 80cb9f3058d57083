"""The API every model in the zoo shares: features -> global average pool -> dropout -> linear.

Fine-tuning swaps the head with ``reset_classifier``; AGC excludes ``get_classifier().weight``.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class ImageClassifier(nn.Module, abc.ABC):
    num_classes: int
    num_features: int
    head_drop: nn.Module
    fc: nn.Linear

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk: [B, 3, H, W] images -> [B, num_features, h, w] feature map."""

    grad_checkpointing: bool = False  # recompute each block in backward instead of keeping it

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def init_classifier(self) -> None:
        """Initialise ``fc``; the default keeps PyTorch's Linear init."""

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        ref = self.fc.weight
        self.fc = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        self.init_classifier()
