"""Image input: reading files and checking arrays, with errors that name the input.

`load_image` is the one way a reference image file is read: the pose command, the render job
(`pose.extract.prepare_reference`) and its input check all go through it, so they all see the
same picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.errors import PoseInputError

#: Colour (RGB) that transparent parts of an image are composited on: white, the usual backdrop
#: of character sheets and cut-outs. The colour stored under transparent pixels is never used.
BACKGROUND_RGB = (255, 255, 255)
# Pillow's modes of 16-bit (and 32-bit integer) single-channel images.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_MAX_16_BIT = 65535


def composite(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA on `BACKGROUND_RGB`. Shapes: (H, W, 4) uint8 -> (H, W, 3) uint8."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    background = np.asarray(BACKGROUND_RGB, np.float32)
    return np.round(rgba[..., :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)


def as_rgb(image, where: str = "image") -> np.ndarray:
    """Check and normalize an image array to contiguous (H, W, 3) uint8 RGB.

    Grey (H, W) and (H, W, 1) images are repeated to 3 channels; RGBA is composited on
    `BACKGROUND_RGB`.
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
        image = composite(image)
    return np.ascontiguousarray(image)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, as every reference-reading path sees it.

    - EXIF orientation is applied.
    - Transparency (RGBA, grey + alpha, palette or colour-key transparency) is composited on
      `BACKGROUND_RGB`.
    - 16-bit greys are scaled to 8 bits (65535 -> 255), not clipped; 32-bit integer greys are read
      as 8-bit when no value exceeds 255, as 16-bit when none exceeds 65535, and refused otherwise,
      as are floating-point images.
    - Grey, palette, CMYK and other modes are converted to RGB (embedded ICC profiles are not
      applied).

    Raises `PoseInputError` naming the file when it is missing, unreadable, corrupt or too large
    for Pillow's decompression-bomb limit.
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise PoseInputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img), path)
    except PoseInputError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types: OSError, SyntaxError, ValueError, ...
        raise PoseInputError(f"cannot read image {path}: {exc}") from exc
    return as_rgb(rgb, where=str(path))


def _to_rgb(img, path: Path) -> np.ndarray:
    """A loaded Pillow image as (H, W, 3) uint8 RGB (see `load_image`)."""
    if img.mode in _WIDE_GREY_MODES:
        return _wide_grey(img, path)
    if img.mode == "F":
        raise PoseInputError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
    if img.has_transparency_data:
        return composite(np.asarray(img.convert("RGBA")))
    return np.asarray(img.convert("RGB"))


def _wide_grey(img, path: Path) -> np.ndarray:
    """A 16-bit or 32-bit integer grey image as 8-bit RGB, scaled (not clipped)."""
    values = np.asarray(img).astype(np.int64)
    peak = int(values.max(initial=0))
    if values.min(initial=0) < 0 or peak > _MAX_16_BIT:
        raise PoseInputError(
            f"{path}: {img.mode} image with values in [{values.min()}, {peak}] is not a 16-bit picture; "
            "save it as 8- or 16-bit"
        )
    scale = 1 if img.mode == "I" and peak <= 255 else 257  # 65535 / 257 = 255
    grey = np.round(values / scale).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    key = img.info.get("transparency")
    if isinstance(key, int):  # a colour-key transparent grey level
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        rgb = composite(np.concatenate([rgb, alpha[:, :, None]], axis=2))
    return rgb
