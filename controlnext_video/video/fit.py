"""Fit a frame to an output size: center crop, pad (letterbox) or stretch. Pure array in, array out."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Fit = Literal["crop", "pad", "stretch"]
FIT_MODES: tuple[str, ...] = get_args(Fit)
#: Pillow resampling filter used for every resize (antialiased when shrinking).
RESAMPLE = "BICUBIC"


def check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate an output size given as ``(height, width)``."""
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"size must be (height, width) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def check_fit(fit: str) -> str:
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    return fit


def fit_frame(frame: np.ndarray, size: tuple[int, int], fit: Fit = "crop") -> np.ndarray:
    """Resize ``frame`` to ``size`` = (height, width).

    - ``"crop"``: scale to cover the output, then cut the centre (no bars, edges lost).
    - ``"pad"``: scale to fit inside the output, then center on black bars (nothing lost).
    - ``"stretch"``: scale each axis independently (aspect ratio changes).

    Shapes: frame (H, W, 3) uint8 -> (size[0], size[1], 3) uint8.
    """
    from PIL import Image

    out_h, out_w = check_size(size)  # type: ignore[misc]
    check_fit(fit)
    src_h, src_w = frame.shape[:2]
    if (src_h, src_w) == (out_h, out_w):
        return frame
    resample = getattr(Image.Resampling, RESAMPLE)
    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    if fit == "stretch":
        return np.asarray(image.resize((out_w, out_h), resample))
    if fit == "crop":
        # The largest box of the output's aspect ratio inside the source, centred.
        if src_w * out_h > out_w * src_h:
            box_w, box_h = src_h * out_w / out_h, float(src_h)
        else:
            box_w, box_h = float(src_w), src_w * out_h / out_w
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        return np.asarray(image.resize((out_w, out_h), resample, box=(left, top, left + box_w, top + box_h)))
    scale = min(out_w / src_w, out_h / src_h)
    new_w = min(out_w, max(1, round(src_w * scale)))
    new_h = min(out_h, max(1, round(src_h * scale)))
    canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image.resize((new_w, new_h), resample))
    return canvas
