"""Image input: reading files and checking arrays, with errors that name the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.errors import PoseInputError


def as_rgb(image, where: str = "image") -> np.ndarray:
    """Check and normalize an image array to contiguous (H, W, 3) uint8 RGB.

    Grey (H, W) and (H, W, 1) images are repeated to 3 channels; RGBA drops its alpha.
    """
    if not isinstance(image, np.ndarray):
        raise PoseInputError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise PoseInputError(f"{where}: expected dtype uint8 (0-255 RGB), got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise PoseInputError(f"{where}: expected shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise PoseInputError(f"{where}: image is empty or degenerate, shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PoseInputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PoseInputError(f"cannot read image {path}: {exc}") from exc
    return as_rgb(np.asarray(rgb), where=str(path))
