"""Image bytes -> a decoded PIL image, or the reason there is none (DESIGN.md section 6).

The size is read from the header before any pixel is decoded, so a decompression bomb costs
nothing: ``too_many_pixels`` above ``max_pixels``, ``tiny_image`` when a side is under
``min_side``, ``decode_error`` for bytes PIL cannot read, ``no_image`` for null.
"""

from __future__ import annotations

import io
from typing import Any

MAX_PIXELS = 50_000_000   # far above any training image; a 20,000 x 20,000 bomb is refused unread
MIN_SIDE = 8              # smaller images carry no usable content


def open_image(data: bytes | None, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> tuple[Any, str | None]:
    from PIL import Image

    if data is None:
        return None, "no_image"
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            return None, "too_many_pixels"
        if min(width, height) < min_side:
            return None, "tiny_image"
        image.load()
    except Image.DecompressionBombError:  # PIL's own limit, when max_pixels is set above it
        return None, "too_many_pixels"
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad bytes
        return None, "decode_error"
    return image, None
