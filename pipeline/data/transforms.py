"""Image transforms on encoded bytes: decode at reduced size when the crop allows (JPEG draft
mode), crop and resize in one PIL pass, flip. Output uint8 HWC; normalisation happens on the
training device. Randomness comes from a per-sample generator, so a sample's augmentation is a
function of (seed, epoch, sample id) alone: identical across restarts, world sizes and workers."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from pipeline.ingest.encode import RejectedImage, open_image

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _decode_region(
    img: Image.Image, box: tuple[float, float, float, float], out: int
) -> Image.Image:
    """Decode an opened (header-only) image and resample crop ``box`` (original pixel coords)
    to out x out."""
    w, h = img.size
    if img.format == "JPEG":
        # DCT-domain downscale (1/2, 1/4, 1/8) while the crop keeps >= out pixels per side.
        side = min(box[2] - box[0], box[3] - box[1])
        scale = 1
        while scale < 8 and side / (scale * 2) >= out:
            scale *= 2
        if scale > 1:
            img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
    try:
        img = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise RejectedImage(f"truncated or corrupt image: {type(e).__name__}") from None
    sx, sy = img.size[0] / w, img.size[1] / h
    region = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return img.resize((out, out), Image.BILINEAR, box=region, reducing_gap=None)


def random_resized_box(
    w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[float, float, float, float]:
    """Inception-style crop: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    side = min(w, h)  # fallback: the central square
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


class TrainTransform:
    def __init__(self, res: int, scale=(0.08, 1.0), flip: bool = True, randaugment=None) -> None:
        self.res, self.scale, self.flip, self.randaugment = res, tuple(scale), flip, randaugment

    def __call__(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
        img = open_image(data)
        img = _decode_region(img, random_resized_box(*img.size, rng, self.scale), self.res)
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.randaugment is not None:
            img = self.randaugment(img, rng)
        return np.asarray(img)


class EvalTransform:
    """Resize the shorter side to res / crop_pct and take the central res x res (one pass)."""

    def __init__(self, res: int, crop_pct: float = 0.875) -> None:
        self.res, self.crop_pct = res, crop_pct

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> np.ndarray:
        img = open_image(data)
        w, h = img.size
        side = min(w, h) * self.crop_pct
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return np.asarray(_decode_region(img, box, self.res))


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float, on whatever device the batch already is."""
    mean = torch.tensor(MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) - mean) / std
