"""PreciseBN recomputes exact population statistics."""

import pytest
import torch
from torch import nn

from pipeline.models import create_model
from pipeline.models.precise_bn import recompute_bn_stats


def test_population_stats_of_known_data_with_uneven_batches():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    data = torch.randn(50, 3, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5]).view(
        1, 3, 1, 1
    )
    data = (data + torch.tensor([2.0, -1.0, 10.0]).view(1, 3, 1, 1)).float()
    batches = list(data.split([7, 13, 1, 29]))  # uneven: a mean of batch variances would be wrong
    used = recompute_bn_stats(bn, iter(batches), num_batches=10)
    assert used == 4
    flat = data.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(bn.running_mean.double(), flat.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        bn.running_var.double(), flat.var(1, unbiased=True), rtol=1e-6, atol=1e-6
    )
    # The naive average of per-batch variances differs on this data: the test can fail.
    naive = torch.stack([b.double().transpose(0, 1).reshape(3, -1).var(1) for b in batches]).mean(0)
    assert not torch.allclose(naive, flat.var(1), rtol=1e-3)


def test_respects_num_batches_and_restores_mode():
    bn = nn.BatchNorm1d(2)
    bn.eval()
    batches = [torch.full((4, 2), float(i)) for i in range(5)]
    assert recompute_bn_stats(bn, iter(batches), num_batches=2) == 2
    assert not bn.training
    torch.testing.assert_close(bn.running_mean, torch.full((2,), 0.5))


def test_resnet_eval_after_precise_bn_and_empty_input():
    m = create_model("resnet_nano", num_classes=4)
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    recompute_bn_stats(m, iter(batches), num_batches=3)
    first = m.stem[1]
    x = torch.cat(batches)
    conv_out = m.stem[0](x).double()
    # The first BN sees the stem conv output, which does not depend on any BN: exact check.
    torch.testing.assert_close(
        first.running_mean.double(), conv_out.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6
    )
    m.eval()
    assert torch.isfinite(m(batches[0])).all()
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn_stats(m, iter([]), num_batches=3)
