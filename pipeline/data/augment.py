"""Optional augmentations of the ImageNet-from-scratch recipe (SPEC §4): MixUp / CutMix on a
batch, RandAugment on a sample. Both draw from generators the caller seeds from (seed, step) or
(seed, epoch, sample id), so resumed runs augment identically."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((len(labels), num_classes), off, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    rng: np.random.Generator,
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with its mirror in the batch (timm's pairing); returns soft targets."""
    targets = one_hot(labels, num_classes, smoothing)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0 or len(labels) < 2:
        return images, targets
    lam = float(rng.beta(alpha, alpha))
    partner = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the pasted area decides the label weight
    else:
        images = images * lam + partner * (1 - lam)
    return images, targets * lam + targets.flip(0) * (1 - lam)


def _affine(img: Image.Image, matrix: tuple) -> Image.Image:
    return img.transform(
        img.size,
        Image.Transform.AFFINE,
        matrix,
        Image.Resampling.BILINEAR,
        fillcolor=(128, 128, 128),
    )


# name -> f(img, magnitude in [0, 1], sign)
_OPS = {
    "identity": lambda img, m, s: img,
    "autocontrast": lambda img, m, s: ImageOps.autocontrast(img),
    "equalize": lambda img, m, s: ImageOps.equalize(img),
    "rotate": lambda img, m, s: img.rotate(
        30 * m * s, Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)
    ),
    "solarize": lambda img, m, s: ImageOps.solarize(img, int(256 - 256 * m)),
    "color": lambda img, m, s: ImageEnhance.Color(img).enhance(1 + 0.9 * m * s),
    "posterize": lambda img, m, s: ImageOps.posterize(img, max(1, int(8 - 4 * m))),
    "contrast": lambda img, m, s: ImageEnhance.Contrast(img).enhance(1 + 0.9 * m * s),
    "brightness": lambda img, m, s: ImageEnhance.Brightness(img).enhance(1 + 0.9 * m * s),
    "sharpness": lambda img, m, s: ImageEnhance.Sharpness(img).enhance(1 + 0.9 * m * s),
    "shear_x": lambda img, m, s: _affine(img, (1, 0.3 * m * s, 0, 0, 1, 0)),
    "shear_y": lambda img, m, s: _affine(img, (1, 0, 0, 0.3 * m * s, 1, 0)),
    "translate_x": lambda img, m, s: _affine(img, (1, 0, 0.45 * m * s * img.size[0], 0, 1, 0)),
    "translate_y": lambda img, m, s: _affine(img, (1, 0, 0, 0, 1, 0.45 * m * s * img.size[1])),
}


class RandAugment:
    """``layers`` random ops at ``magnitude`` / 30 of their range (the NFNet recipe uses 4 layers,
    magnitude by variant, e.g. 10 for F0 up to 20 for F7)."""

    def __init__(self, layers: int = 4, magnitude: float = 10.0) -> None:
        if layers < 0 or not 0 <= magnitude <= 30:
            raise ValueError(
                f"RandAugment needs layers >= 0 and magnitude in [0, 30], got {layers}, {magnitude}"
            )
        self.layers, self.magnitude = layers, magnitude / 30

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        img = Image.fromarray(image.permute(1, 2, 0).numpy())
        names = list(_OPS)
        for _ in range(self.layers):
            op = names[int(rng.integers(len(names)))]
            img = _OPS[op](img, self.magnitude, 1 if rng.random() < 0.5 else -1)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
