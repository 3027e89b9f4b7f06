"""Review previews: a side-by-side video (reference | poses | result, one row per output frame)
and a contact sheet (result frames beside their poses, in a grid)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
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


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames, first and last included (all of
    them when there are no more than `count`)."""
    if total < 1 or count < 1:
        raise ValueError(f"need at least one frame and one index, got total={total}, count={count}")
    if total <= count:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def contact_sheet(
    poses: Sequence[np.ndarray], results: Sequence[np.ndarray], *, columns: int = 4, panel_height: int = 128,
    gap: int = 4,
) -> np.ndarray:
    """Result frames beside their poses, in a grid: cell ``i`` is pose ``i`` | result ``i``, both
    scaled to ``panel_height``; cells fill rows of ``columns``, ``gap`` white pixels apart.

    Shapes: poses and results (H, W, 3) uint8 RGB, as many of each; returns (rows * (panel_height
    + gap) - gap, columns * (cell width + gap) - gap, 3) uint8, where a cell is two panels wide.
    """
    if len(poses) != len(results) or not results:
        raise ValueError(f"need as many poses as results, at least one: got {len(poses)} and {len(results)}")
    if columns < 1 or panel_height < 2 or gap < 0:
        raise ValueError(f"columns >= 1, panel_height >= 2 and gap >= 0 needed, got {columns}, {panel_height}, {gap}")
    for i, (pose, result) in enumerate(zip(poses, results)):
        check_rgb(pose, f"pose {i}")
        check_rgb(result, f"result {i}")
    cells = [np.concatenate([_panel(p, panel_height), _panel(r, panel_height)], axis=1) for p, r in zip(poses, results)]
    cell_h, cell_w = panel_height, max(cell.shape[1] for cell in cells)
    columns = min(columns, len(cells))
    rows = -(-len(cells) // columns)
    sheet = np.full((rows * (cell_h + gap) - gap, columns * (cell_w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, cell in enumerate(cells):
        top, left = (i // columns) * (cell_h + gap), (i % columns) * (cell_w + gap)
        sheet[top: top + cell_h, left: left + cell.shape[1]] = cell
    return sheet
