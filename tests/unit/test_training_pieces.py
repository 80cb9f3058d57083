"""Schedule, LR scaling, generated data and the single-process recipe."""

import itertools
import math

import pytest
import torch

from pipeline.config import ConfigError, build_config
from pipeline.data.synthetic import SyntheticImages
from pipeline.optim.schedules import scaled_lr, warmup_cosine
from pipeline.train.quickstart import QuickstartCfg, train


def test_warmup_then_cosine_to_zero():
    values = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[-1] < 1e-3
    with pytest.raises(ValueError):
        warmup_cosine(0, 10, 11)


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 4096) == pytest.approx(1.6)  # SPEC §4


def test_synthetic_images_are_deterministic_and_labelled():
    data = SyntheticImages(num_classes=5, res=32, seed=1)
    a, la = data.batch(3, 16)
    b, lb = data.batch(3, 16)
    c, _ = data.batch(4, 16)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert a.shape == (16, 3, 32, 32) and la.min() >= 0 and la.max() < 5
    assert abs(a.mean().item()) < 0.5 and 0.2 < a.std().item() < 2.0


def test_recipe_learns_on_generated_images():
    """The demo's claim: held-out loss falls well below chance (ln 10 = 2.30) in 40 steps."""
    result = train(QuickstartCfg(steps=40))
    assert result.heldout_before == pytest.approx(math.log(10), abs=0.05)
    assert result.heldout_after < 1.8
    assert all(math.isfinite(s.loss) for s in result.steps)
    assert any(s.clipped_fraction > 0 for s in result.steps)  # AGC is really active


def test_quickstart_config_validation():
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_config(QuickstartCfg, {"steps": 2, "warmup_steps": 3})
    with pytest.raises(ConfigError, match="unknown model"):
        build_config(QuickstartCfg, {"model": "vit_b16"})
