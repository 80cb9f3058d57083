"""Turn source bytes into what a shard stores: the image as stored (or re-encoded when over a max
side), its class index and JSON metadata. Never decodes more than the header unless resizing."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass

from PIL import Image

# A decompression bomb is refused, not decoded: 1.5 gigapixel is past any real photograph.
MAX_PIXELS = 1_500_000_000 // 16  # ~94 Mpx

_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


class RejectedImage(ValueError):
    """The bytes are not an image we accept; the reason goes to the manifest's skipped list."""


@dataclass(frozen=True)
class EncodeSettings:
    max_side: int = 512
    jpeg_quality: int = 90


def open_image(data: bytes) -> Image.Image:
    if not data:
        raise RejectedImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise RejectedImage(f"decompression bomb refused: {e}") from None
        except Exception as e:  # PIL raises many types for bad bytes
            raise RejectedImage(f"not a decodable image: {type(e).__name__}") from None
    if w * h > MAX_PIXELS:
        raise RejectedImage(f"decompression bomb refused: {w}x{h} pixels > {MAX_PIXELS}")
    return img


def encode_sample(
    data: bytes, source: str, label_index: int, label: str, settings: EncodeSettings
) -> dict[str, bytes]:
    """Members of one sample (extension -> bytes); raises RejectedImage for unusable input."""
    img = open_image(data)
    fmt = img.format or ""
    width, height = img.size
    stored, reencoded = data, False
    if max(width, height) > settings.max_side or fmt not in _EXT:
        try:
            img.load()
        except Exception as e:
            raise RejectedImage(f"truncated or corrupt image: {type(e).__name__}") from None
        img = img.convert("RGB")
        if max(width, height) > settings.max_side:
            scale = settings.max_side / max(width, height)
            img = img.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC
            )
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=settings.jpeg_quality)
        stored, reencoded, fmt = buf.getvalue(), True, "JPEG"
        width, height = img.size
    else:
        try:
            img.verify()  # cheap integrity check of the stored bytes, no full decode for JPEG
        except Exception as e:
            raise RejectedImage(f"truncated or corrupt image: {type(e).__name__}") from None
    meta = {
        "source": source,
        "sha256": hashlib.sha256(data).hexdigest(),
        "label": label,
        "width": width,
        "height": height,
        "reencoded": reencoded,
    }
    if reencoded:
        meta["stored_sha256"] = hashlib.sha256(stored).hexdigest()
    return {
        _EXT[fmt]: stored,
        "cls": str(label_index).encode(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
