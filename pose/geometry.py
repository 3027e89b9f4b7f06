"""Cover-crop geometry: how the reference image becomes the output frame; points in the picture.

The reference script resizes the image to cover the output size, keeping its aspect ratio (the
resized side is rounded up), then crops the centre (the offset rounded half to even, as
torchvision's `center_crop` does). Poses of the reference must be expressed in that cropped
frame; `CoverCrop` maps normalized points between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pose.errors import PoseInputError


@dataclass(frozen=True)
class CoverCrop:
    """Resize (src_width, src_height) to (resized_width, resized_height), then crop
    (width, height) at (left, top)."""

    src_width: int
    src_height: int
    resized_width: int
    resized_height: int
    left: int
    top: int
    width: int
    height: int

    def points_to_output(self, points: np.ndarray) -> np.ndarray:
        """Normalized (x, y[, score]) in the source image -> normalized in the cropped output.

        Shapes: (..., 2 or 3) -> same; scores pass through unchanged.
        """
        out = np.array(points, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] * self.resized_width - self.left) / self.width
        out[..., 1] = (out[..., 1] * self.resized_height - self.top) / self.height
        return out


def cover_crop(src_width: int, src_height: int, width: int, height: int) -> CoverCrop:
    """The resize-to-cover then centre-crop geometry of the reference script."""
    for name, v in (("src_width", src_width), ("src_height", src_height), ("width", width), ("height", height)):
        if int(v) != v or v <= 0:
            raise PoseInputError(f"cover_crop: {name} must be a positive integer, got {v!r}")
    if src_height / src_width < height / width:
        rh, rw = height, math.ceil(height / (src_height / src_width))
    else:
        rh, rw = math.ceil(width * (src_height / src_width)), width
    return CoverCrop(
        src_width=int(src_width), src_height=int(src_height),
        resized_width=int(rw), resized_height=int(rh),
        left=int(round((rw - width) / 2.0)), top=int(round((rh - height) / 2.0)),
        width=int(width), height=int(height),
    )


def cover_crop_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB image to cover height x width and crop the centre.

    Uses Pillow's antialiased bilinear filter (the reference resizes with torchvision's
    antialiased bilinear). Shapes: (h, w, 3) uint8 -> (height, width, 3) uint8.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PoseInputError(f"cover_crop_image needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    g = cover_crop(image.shape[1], image.shape[0], width, height)
    resized = Image.fromarray(image).resize((g.resized_width, g.resized_height), Image.BILINEAR)
    return np.asarray(resized)[g.top:g.top + height, g.left:g.left + width].copy()


def inside_picture(points: np.ndarray) -> np.ndarray:
    """Normalized (x, y, score) points with those outside the picture set to (0, 0, 0): not found.

    Shapes: (N, 3) -> (N, 3) float64.
    """
    out = np.array(points, dtype=np.float64, copy=True)
    outside = ((out[:, :2] < 0.0) | (out[:, :2] > 1.0)).any(axis=1)
    out[outside] = 0.0
    return out
