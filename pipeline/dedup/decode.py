"""Safe image decoding for the filter: bytes -> RGB PIL image, or None when it cannot be read.

Pool bytes come from the open web, so decoding must never take the process down: oversized
images (decompression bombs) are refused from the header alone, before any pixel is decoded, and
every decoder failure is reported as "undecodable" instead of raised.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

# 50 MP: above any common camera (a 45 MP full-frame sensor), below PIL's own bomb limit (89 MP),
# and small enough that a worst-case RGB decode stays at 150 MB per worker.
DEFAULT_MAX_PIXELS = 50_000_000


class UndecodableImage(ValueError):
    """The bytes are not an image PIL can decode within the pixel limit."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int = 0) -> Image.Image:
    """Decode to an RGB image; raise UndecodableImage on any failure.

    draft > 0 lets JPEG decode at a reduced power-of-two scale that still covers draft x draft
    pixels (libjpeg's DCT-domain downscale: several times faster, and anti-aliased).
    """
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its own limit; treat that warning as the error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise UndecodableImage(f"{width}x{height} exceeds the {max_pixels}-pixel limit")
            if draft and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            image.load()
            return _to_rgb(_upright(image))
    except UndecodableImage:
        raise
    # Corrupt data surfaces as many exception types inside PIL's plugins (OSError, ValueError,
    # SyntaxError, struct.error, EOFError, IndexError, DecompressionBombError, the bomb warning
    # raised above ...), so all of them mean "undecodable".
    except Exception as e:
        raise UndecodableImage(f"{type(e).__name__}: {e}") from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as viewers do; broken EXIF leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent areas become white, as a browser would show them on a page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale: rescale to 8 bits before PIL's clipping convert.
        image = image.convert("F")
        lo, hi = image.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = image.point(lambda v: (v - lo) * scale).convert("L")
    return image.convert("RGB")
