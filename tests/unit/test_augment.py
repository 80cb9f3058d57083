"""MixUp / CutMix targets and RandAugment determinism."""

import numpy as np
import pytest
import torch

from pipeline.data.augment import RandAugment, mix_batch, one_hot


def test_one_hot_with_smoothing():
    t = one_hot(torch.tensor([0, 2]), 4, smoothing=0.1)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0, 0] == pytest.approx(0.925)


def test_mixup_weights_images_and_targets_alike():
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(images, labels, 4, np.random.default_rng(0), mixup_alpha=0.4)
    lam = targets[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(targets.sum(1), torch.ones(4))
    assert mixed[0, 0, 0, 0].item() == pytest.approx(
        0 * lam + 3 * (1 - lam)
    )  # paired with the mirror
    again, _ = mix_batch(images, labels, 4, np.random.default_rng(0), mixup_alpha=0.4)
    assert torch.equal(mixed, again)


def test_cutmix_label_weight_is_the_pasted_area():
    images = torch.zeros(2, 3, 10, 10)
    images[1] = 1.0
    mixed, targets = mix_batch(torch.as_tensor(images), torch.tensor([0, 1]), 2, np.random.default_rng(3),
                               mixup_alpha=0.0, cutmix_alpha=1.0)  # fmt: skip
    pasted = mixed[0, 0].mean().item()  # fraction of sample 0 now showing sample 1
    assert targets[0, 1].item() == pytest.approx(pasted)
    assert torch.allclose(targets.sum(1), torch.ones(2))


def test_randaugment_is_deterministic_per_generator():
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 24, 24), dtype=np.uint8))
    ra = RandAugment(layers=4, magnitude=15)
    a = ra(img, np.random.default_rng(7))
    assert a.shape == img.shape and a.dtype == torch.uint8
    assert torch.equal(a, ra(img, np.random.default_rng(7)))
    assert not all(torch.equal(a, ra(img, np.random.default_rng(s))) for s in range(8, 12))
    assert torch.equal(RandAugment(layers=0)(img, np.random.default_rng(0)), img)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)


def test_train_transform_with_randaugment():
    from pipeline.data.demo_images import jpeg_bytes, render
    from pipeline.data.transforms import TrainTransform

    data = jpeg_bytes(render(1, 0, 0, 48))
    t = TrainTransform(32, randaugment=RandAugment(4, 20))
    a = t(data, np.random.default_rng(1))
    assert a.shape == (3, 32, 32) and torch.equal(a, t(data, np.random.default_rng(1)))
    assert not torch.equal(a, TrainTransform(32)(data, np.random.default_rng(1)))
