"""Side-by-side review video: reference | poses | result, one row per output frame."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from .encode import EncodedVideo, VideoWriter
from .errors import VideoError
from .fit import fit_frame
from .sequence import check_rgb


def even(value: int) -> int:
    """The largest even number <= ``value``, at least 2 (H.264 and ProRes need even sizes)."""
    return max(2, int(value) // 2 * 2)


def panel_width(height: int, width: int, panel_height: int) -> int:
    """Even width of a panel showing a ``height x width`` picture at ``panel_height``."""
    return max(2, round(width * panel_height / height / 2) * 2)


def write_side_by_side(
    path: str | os.PathLike[str],
    reference: np.ndarray,
    poses: Iterable[np.ndarray],
    results: Iterable[np.ndarray],
    fps: Fraction | int | str,
    *,
    height: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    **writer_options: Any,
) -> EncodedVideo:
    """Write a preview with the reference image, the pose frames and the result frames side by side.

    Each panel is scaled to ``height`` (default: the first result's height; rounded down to even)
    keeping its aspect ratio, to an even width, so the video always has even dimensions. ``poses`` and ``results`` are streamed and must have the same
    length. ``writer_options`` go to `VideoWriter` (``codec``, ``crf``, ``audio_source``,
    ``audio_offset``...). ``progress(done, None)`` is called after each frame.

    Shapes: reference (Hr, Wr, 3), poses and results yield (H, W, 3), all uint8 RGB.
    """
    check_rgb(reference, "reference")
    if height is not None and (not isinstance(height, int) or height < 2):
        raise ValueError(f"height must be an int >= 2, got {height!r}")
    pose_iter, result_iter = iter(poses), iter(results)
    ref_panel: np.ndarray | None = None
    done = 0
    with VideoWriter(path, fps, **writer_options) as writer:
        while True:
            pose = next(pose_iter, None)
            result = next(result_iter, None)
            if pose is None and result is None:
                break
            if pose is None or result is None:
                short = "poses" if pose is None else "results"
                raise VideoError(path, f"{short} ended after {done} frames, the other sequence is longer")
            check_rgb(pose, f"pose frame {done}")
            check_rgb(result, f"result frame {done}")
            if ref_panel is None:
                height = even(height if height is not None else result.shape[0])
                ref_panel = _panel(reference, height)
            row = np.concatenate([ref_panel, _panel(pose, height), _panel(result, height)], axis=1)  # type: ignore[arg-type]
            writer.write(row)
            done += 1
            if progress is not None:
                progress(done, None)
    assert writer.result is not None
    return writer.result


def _panel(frame: np.ndarray, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return fit_frame(frame, (height, panel_width(h, w, height)), "pad")
