"""Procedurally generated, natural-looking labelled images for the CPU demo and tests.

A class is a (shape, surface pattern) pair: e.g. "ring with stripes", "star with dots", with a
typical hue (drawn around the class's own, at a random luma). Lighting, position, scale,
rotation, background texture (1/f noise) and clutter are drawn per image and carry no label
information, so a model learns the easy cue (colour) first and then shapes and textures, the
way a real corpus leads it. Deterministic in (seed, class, index); GENERATOR names the recipe.
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

GENERATOR = (
    "shapes-v2"  # v2: class hues (luma kept), coarser patterns; demo data rebuilds on change
)
SHAPES = ("disc", "ring", "square", "triangle", "star", "cross", "hexagon", "crescent")
PATTERNS = ("plain", "stripes", "dots", "checker")


def class_spec(index: int) -> tuple[str, str]:
    return SHAPES[index % len(SHAPES)], PATTERNS[(index // len(SHAPES)) % len(PATTERNS)]


def class_name(index: int) -> str:
    shape, pattern = class_spec(index)
    return f"{index:03d}_{shape}_{pattern}"


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """1/f^slope noise in [0, 1], stretched along a random direction: natural images' spectra
    fall off at different rates and are rarely isotropic (grass, bark, water, sky)."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    theta, stretch = rng.uniform(0, math.pi), rng.uniform(1.0, 4.0)
    u = fx * math.cos(theta) + fy * math.sin(theta)
    v = -fx * math.sin(theta) + fy * math.cos(theta)
    radius = np.sqrt((u * stretch) ** 2 + v**2)
    radius[0, 0] = 1.0
    slope = rng.uniform(0.7, 1.4)
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius**slope
    field = np.real(np.fft.ifft2(spectrum))
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def _random_colour(
    rng: np.random.Generator, lightness: tuple[float, float]
) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(rng.random(), rng.uniform(*lightness), rng.uniform(0.35, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        pts = [(r if k % 2 == 0 else 0.45 * r, angle + k * math.pi / 5) for k in range(10)]
    else:
        n = {"square": 4, "triangle": 3, "hexagon": 6}[shape]
        pts = [(r, angle + 2 * math.pi * k / n) for k in range(n)]
    return [(cx + d * math.cos(a), cy + d * math.sin(a)) for d, a in pts]


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = size * rng.uniform(0.22, 0.36)
    cx, cy = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)
    angle = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        k = r * rng.uniform(0.45, 0.6)
        draw.ellipse((cx - k, cy - k, cx + k, cy + k), fill=0)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        dx, dy = 0.5 * r * math.cos(angle), 0.5 * r * math.sin(angle)
        draw.ellipse((cx - r + dx, cy - r + dy, cx + r + dx, cy + r + dy), fill=0)
    elif shape == "cross":
        w = r * 0.38
        for a in (angle, angle + math.pi / 2):
            ux, uy = math.cos(a), math.sin(a)
            vx, vy = -uy * w, ux * w
            draw.polygon(
                [(cx - ux * r + vx, cy - uy * r + vy), (cx + ux * r + vx, cy + uy * r + vy),
                 (cx + ux * r - vx, cy + uy * r - vy), (cx - ux * r - vx, cy - uy * r - vy)],
                fill=255,
            )  # fmt: skip
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _pattern(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Surface modulation in [0.35, 1] for the shape's fill."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6.0, 9.0) * size / 64
    theta = rng.uniform(0, math.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    if pattern == "stripes":
        m = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * u / period))
    elif pattern == "checker":
        m = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif pattern == "dots":
        fu, fv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        m = ((fu**2 + fv**2) < 0.09).astype(np.float32)
    else:
        m = np.ones((size, size), np.float32)
    return 0.35 + 0.65 * m


def _background(rng: np.random.Generator, work: int) -> np.ndarray:
    """A scene-like backdrop, varied per image the way photographs vary: textured noise in two
    colours, often with a grating (fences, waves, fabric) and sharp-edged clutter (objects)."""
    a, b = np.array(_random_colour(rng, (0.15, 0.85))), np.array(_random_colour(rng, (0.15, 0.85)))
    noise = _pink_noise(rng, work)[..., None]
    canvas = a * (1 - noise) + b * noise
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:work, 0:work].astype(np.float32)
        theta, period = rng.uniform(0, math.pi), rng.uniform(0.04, 0.3) * work
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        canvas = canvas * (1 + rng.uniform(0.1, 0.35) * wave[..., None])
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        colour = _random_colour(rng, (0.1, 0.9))
        x0, y0, x1, y1 = (rng.uniform(-0.2, 1.2, 4) * work).tolist()
        kind = rng.integers(3)
        if kind == 0:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, work // 12)))
        elif kind == 1:
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=colour)
        else:
            draw.polygon(
                [tuple(p) for p in (rng.uniform(-0.2, 1.2, (3, 2)) * work).tolist()], fill=colour
            )
    return np.asarray(img, np.float32)


def _class_chroma(rgb: np.ndarray, class_index: int, rng: np.random.Generator) -> np.ndarray:
    """The colour turned towards the class's typical hue, its luma kept: many real classes have
    one (sky, grass, fire engines), a cue a small model picks up within a few hundred steps
    before it learns shape and texture; luminance-only copy detection sees the same image."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    magnitude = max(math.hypot(-0.168736 * r - 0.331264 * g + 0.5 * b,
                               0.5 * r - 0.418688 * g - 0.081312 * b), 40.0)  # fmt: skip
    angle = 2 * math.pi * ((class_index * 0.618034) % 1.0) + rng.normal(0, 0.25)
    cb, cr = magnitude * math.cos(angle), magnitude * math.sin(angle)
    out = (y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb)
    return np.clip(np.array(out, np.float32), 0, 255)


def render(class_index: int, seed: int, index: int, size: int = 72) -> Image.Image:
    """One image of class ``class_index``; (seed, class_index, index) determine every pixel."""
    rng = np.random.default_rng([seed, class_index, index])
    shape, pattern = class_spec(class_index)
    work = size * 2  # draw at 2x and downsample: anti-aliased edges like a camera's
    canvas = _background(rng, work)
    for _ in range(rng.integers(0, 4)):  # clutter: soft blobs that belong to no class
        cy, cx = rng.uniform(0, work, 2).tolist()
        rad = rng.uniform(0.05, 0.15) * work
        yy, xx = np.mgrid[0:work, 0:work]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad**2))[..., None]
        canvas = canvas * (1 - 0.6 * blob) + np.array(_random_colour(rng, (0.3, 0.7))) * 0.6 * blob
    fg = np.array(_random_colour(rng, (0.25, 0.75)), np.float32)
    fg = _class_chroma(fg, class_index, np.random.default_rng([seed, class_index, index, 1]))
    fill = fg * _pattern(pattern, work, rng)[..., None]
    mask = np.asarray(_shape_mask(shape, work, rng), np.float32)[..., None] / 255.0
    canvas = canvas * (1 - mask) + fill * mask
    yy, xx = np.mgrid[0:work, 0:work] / work  # lighting: a directional gradient
    light = 0.75 + 0.5 * (rng.uniform(-1, 1) * (xx - 0.5) + rng.uniform(-1, 1) * (yy - 0.5))
    canvas = canvas * light[..., None] * rng.uniform(0.8, 1.2)
    canvas = canvas + rng.normal(0, 6, canvas.shape)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img.resize((size, size), Image.LANCZOS)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---- near-duplicate transforms (planted copies of reference images) ----------------------------

TRANSFORMS = ("reencode", "resize", "crop", "flip", "colour", "grey", "text", "crop_flip_reencode")


def near_duplicate(
    img: Image.Image, transform: str, rng: np.random.Generator
) -> tuple[Image.Image, int]:
    """A transformed copy of ``img`` and the JPEG quality to store it with."""
    img = img.copy()  # ImageDraw draws in place: never touch the caller's image
    w, h = img.size
    quality = 90
    if transform in ("reencode", "crop_flip_reencode"):
        quality = int(rng.integers(25, 55))
    if transform == "resize":
        s = rng.uniform(0.55, 0.8)
        img = img.resize((round(w * s), round(h * s)), Image.BILINEAR).resize(
            (w, h), Image.BILINEAR
        )
    if transform in ("crop", "crop_flip_reencode"):
        frac = math.sqrt(rng.uniform(0.7, 0.9))  # keep 70-90% of the area
        cw, ch = round(w * frac), round(h * frac)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)
    if transform in ("flip", "crop_flip_reencode"):
        img = ImageOps.mirror(img)
    if transform == "colour":
        arr = np.asarray(img, np.float32) * rng.uniform(0.7, 1.3, 3) + rng.uniform(-25, 25, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if transform == "grey":
        img = ImageOps.grayscale(img).convert("RGB")
    if transform == "text":
        draw = ImageDraw.Draw(img)
        words = ["SAMPLE", "(c) 2026", "stock", "photo", "DEMO"]
        y = int(rng.integers(0, h - 12))
        draw.text((int(rng.integers(0, w // 3)), y), str(rng.choice(words)), fill=(255, 255, 255),
                  font=ImageFont.load_default())  # fmt: skip
    return img, quality
