"""Copy transforms for the near-duplicate benchmark and tests: each maps (image, rng) -> bytes.

The edits are the ones the filter must see through (SPEC section 6): re-encoding, resizing,
cropping, flips, colour shifts, greyscale and overlaid text, alone and combined. Every output is
encoded like a web image (JPEG unless the transform says otherwise) because the filter reads bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], bytes]
WORDS = ("SAMPLE", "stock photo", "(c) 2024", "watermark", "DO NOT COPY", "preview", "news")


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def resize(image: Image.Image, scale: float) -> Image.Image:
    w, h = image.size
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def crop_area(image: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """A random crop keeping an area fraction in [lo, hi], sides jittered up to 4:3 either way."""
    area = rng.uniform(lo, hi)
    ratio = np.exp(rng.uniform(-np.log(4 / 3), np.log(4 / 3)))
    fw = min(1.0, np.sqrt(area * ratio))
    fh = min(1.0, area / fw)
    w, h = image.size
    cw, ch = max(8, round(w * fw)), max(8, round(h * fh))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return image.crop((x0, y0, x0 + cw, y0 + ch))


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.6-1.5 (a strong photo-editor edit)."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        factor = float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.25, 1.5)]))
        image = enhancer(image).enhance(factor)
    return image


def hue_shift(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate hue by 40-140 degrees either way: the largest colour change short of greyscale."""
    h, s, v = image.convert("HSV").split()
    shift = int(rng.integers(28, 100)) * int(rng.choice([-1, 1]))
    h = h.point(lambda x: (x + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def text_overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Three captions in the default font at random places, opaque, 1/10 of the height tall."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    font = ImageFont.load_default(size=max(10, h // 10))
    for _ in range(3):
        word = str(rng.choice(WORDS))
        xy = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - h // 10))))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.text(xy, word, fill=fill, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return image


def watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A large half-transparent white caption across the middle, as stock-photo previews do."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    w, h = base.size
    font = ImageFont.load_default(size=max(12, h // 6))
    word = str(rng.choice(WORDS))
    xy = (int(w * rng.uniform(0.02, 0.3)), int(h * rng.uniform(0.3, 0.6)))
    ImageDraw.Draw(layer).text(xy, word, fill=(255, 255, 255, 110), font=font)
    return Image.alpha_composite(base, layer).convert("RGB")


def _jpeg(quality: int) -> Transform:
    return lambda im, rng: encode(im, quality=quality)


# Single edits, then the combinations seen in the wild (platform re-posts stack several).
TRANSFORMS: dict[str, Transform] = {
    "png_reencode": lambda im, rng: encode(im, "PNG"),
    "jpeg_q15": _jpeg(15),
    "resize_down_0.35": lambda im, rng: encode(resize(im, 0.35)),
    "resize_up_1.7": lambda im, rng: encode(resize(im, 1.7)),
    "crop_75_90": lambda im, rng: encode(crop_area(im, rng, 0.75, 0.9)),
    "crop_60_75": lambda im, rng: encode(crop_area(im, rng, 0.6, 0.75)),
    "flip": lambda im, rng: encode(ImageOps.mirror(im)),
    "colour_jitter": lambda im, rng: encode(colour_jitter(im, rng)),
    "hue_shift": lambda im, rng: encode(hue_shift(im, rng)),
    "greyscale": lambda im, rng: encode(im.convert("L")),
    "text_overlay": lambda im, rng: encode(text_overlay(im, rng)),
    "watermark": lambda im, rng: encode(watermark(im, rng)),
    "crop+flip+jpeg30": lambda im, rng: encode(
        ImageOps.mirror(crop_area(im, rng, 0.6, 0.9)), quality=30
    ),
    "grey+resize+crop": lambda im, rng: encode(
        resize(crop_area(im, rng, 0.6, 0.9), 0.5).convert("L")
    ),
    "colour+text+jpeg30": lambda im, rng: encode(
        text_overlay(colour_jitter(im, rng), rng), quality=30
    ),
    "flip+hue+resize": lambda im, rng: encode(resize(ImageOps.mirror(hue_shift(im, rng)), 0.6)),
}

# Applied to negatives so that they are encoded like the positives (no trivial tell).
NEGATIVE_TRANSFORMS: dict[str, Transform] = {
    "jpeg90": _jpeg(90),
    "flip": TRANSFORMS["flip"],
    "greyscale": TRANSFORMS["greyscale"],
    "resize_down_0.35": TRANSFORMS["resize_down_0.35"],
    "colour_jitter": TRANSFORMS["colour_jitter"],
}
