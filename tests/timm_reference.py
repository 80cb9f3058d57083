"""timm's dm_nfnet models as references for the weight importers (tests/unit/test_timm_weights.py,
test_haiku_weights.py): timm's random init with every gain, bias and skip gain drawn away from its
init value, so that each layer and branch shows in the logits (published weights are not
downloadable here)."""

from __future__ import annotations

import torch

# Our model built to timm's conventions: DeepMind's SAME padding and timm's epsilon.
TIMM_CONVENTION = {"padding": "same", "ws_eps": 1e-5, "ws_eps_per_variance": True}


def reference_nfnet(timm, variant: str, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=classes).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain"):  # 0 at init: the residual branches would vanish
                p.uniform_(0.3, 1.0, generator=g)
            elif name.endswith("gain"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.startswith("head"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())
