"""Image transforms on encoded bytes -> uint8 CHW tensors; normalisation happens on the device.

Fast path (measured in BENCHMARKS.md): JPEGs decode with libjpeg-turbo (simplejpeg), at a
reduced DCT scale when the crop allows (1/2, 1/4, 1/8: the "draft mode" win when the crop is
smaller than the source); the crop is a slice, and the resize is torch's vectorised antialiased
uint8 bilinear kernel. Other formats decode with PIL. Randomness comes from a per-sample
generator, so a sample's augmentation is a function of (seed, epoch, sample id) alone: identical
across restarts, world sizes and loader workers.
"""

from __future__ import annotations

import io
import math

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.ingest.encode import MAX_PIXELS, RejectedImage, open_image

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
Box = tuple[float, float, float, float]


def image_size(data: bytes) -> tuple[int, int, bool]:
    """(width, height, is_jpeg) from the header only; refuses bombs and non-images."""
    if data[:2] == b"\xff\xd8":
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as e:
            raise RejectedImage(f"not a decodable JPEG: {e}") from None
        if w * h > MAX_PIXELS:
            raise RejectedImage(f"decompression bomb refused: {w}x{h} pixels > {MAX_PIXELS}")
        return w, h, True
    w, h = open_image(data).size
    return w, h, False


def decode_region(
    data: bytes,
    box: Box,
    out: int,
    exact: bool = False,
    size: tuple[int, int, bool] | None = None,
) -> torch.Tensor:
    """Crop ``box`` (pixel coords of the full image) resampled to out x out, uint8 [3, out, out].
    ``size`` is ``image_size(data)`` when the caller already read the header."""
    w, h, is_jpeg = size or image_size(data)
    if is_jpeg:
        # DCT-domain downscale by 1/2, 1/4 or 1/8 while the crop keeps >= out px per side. Only
        # powers of two: libjpeg-turbo's other M/8 factors take slow IDCT paths (measured slower
        # than decoding at full size).
        side = min(box[2] - box[0], box[3] - box[1])
        scale = 1
        while scale < 8 and side / (2 * scale) >= out:
            scale *= 2
        try:
            arr = simplejpeg.decode_jpeg(
                data, colorspace="RGB", fastdct=not exact, fastupsample=not exact,
                min_width=math.ceil(w / scale), min_height=math.ceil(h / scale),
            )  # fmt: skip
        except ValueError as e:
            raise RejectedImage(f"truncated or corrupt JPEG: {e}") from None
    else:
        try:
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        except (OSError, ValueError) as e:
            raise RejectedImage(f"truncated or corrupt image: {type(e).__name__}") from None
    sy, sx = arr.shape[0] / h, arr.shape[1] / w
    x0, y0 = int(box[0] * sx), int(box[1] * sy)
    x1 = max(x0 + 1, min(arr.shape[1], round(box[2] * sx)))
    y1 = max(y0 + 1, min(arr.shape[0], round(box[3] * sy)))
    crop = torch.from_numpy(np.ascontiguousarray(arr[y0:y1, x0:x1])).permute(2, 0, 1)[None]
    return F.interpolate(
        crop, size=(out, out), mode="bilinear", antialias=True, align_corners=False
    )[0]


def random_resized_box(
    w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> Box:
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


def center_box(w: int, h: int, crop_pct: float) -> Box:
    side = min(w, h) * crop_pct
    return ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)


class TrainTransform:
    """Random-resized crop + horizontal flip (+ optional RandAugment) at ``res``."""

    def __init__(self, res: int, scale=(0.08, 1.0), flip: bool = True, randaugment=None) -> None:
        self.res, self.scale, self.flip, self.randaugment = res, tuple(scale), flip, randaugment

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        size = image_size(data)
        img = decode_region(
            data, random_resized_box(*size[:2], rng, self.scale), self.res, size=size
        )
        if self.flip and rng.random() < 0.5:
            img = img.flip(-1)
        if self.randaugment is not None:
            img = self.randaugment(img, rng)
        return img


class EvalTransform:
    """Resize the shorter side to res / crop_pct and take the central res x res (one pass)."""

    def __init__(self, res: int, crop_pct: float = 0.875) -> None:
        self.res, self.crop_pct = res, crop_pct

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> torch.Tensor:
        size = image_size(data)
        box = center_box(*size[:2], self.crop_pct)
        return decode_region(data, box, self.res, exact=True, size=size)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float, on whatever device the batch already is."""
    mean = torch.tensor(MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) - mean) / std
