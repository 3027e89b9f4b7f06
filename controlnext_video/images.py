"""Reference-image preparation: cover the output size, then center-crop (as the reference does)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def cover_crop_box(src_width: int, src_height: int, width: int, height: int) -> tuple[float, float, float]:
    """Scale and offsets mapping source pixels onto the covered, center-cropped output.

    Returns `(scale, offset_x, offset_y)`: output pixel = source pixel * scale - offset.
    """
    if min(src_width, src_height, width, height) <= 0:
        raise ValueError(f"sizes must be positive, got source {src_width}x{src_height}, output {width}x{height}")
    scale = max(width / src_width, height / src_height)
    return scale, (src_width * scale - width) / 2, (src_height * scale - height) / 2


def prepare_reference(image: Image.Image | np.ndarray, height: int, width: int) -> Image.Image:
    """Resize `image` to cover `width` x `height` keeping its aspect ratio, then center-crop."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    scale, off_x, off_y = cover_crop_box(image.width, image.height, width, height)
    resized_w = max(width, round(image.width * scale))
    resized_h = max(height, round(image.height * scale))
    resized = image.resize((resized_w, resized_h), Image.Resampling.BICUBIC)
    left = (resized_w - width) // 2
    top = (resized_h - height) // 2
    return resized.crop((left, top, left + width, top + height))
