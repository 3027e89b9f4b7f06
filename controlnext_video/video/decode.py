"""Streaming decode: stride and frame limit chosen before decoding, frames upright and resized.

Memory does not grow with clip length: frames are decoded, converted and yielded one at a time.

Variable frame rate policy: a VFR clip (see `probe`) is resampled by timestamps onto a
constant-rate grid at ``info.fps`` (its average rate, snapped to a standard rate within 1%):
output frame ``j`` is the source frame whose timestamp is nearest to ``j * stride / info.fps``
after the first frame (the earlier one on a tie), like FFmpeg's ``fps`` filter. Frames are
repeated over gaps and skipped where they come faster than the grid, so ``j / output_fps`` is
always the true time of frame ``j`` and audio stays in sync; timestamp jitter of less than half
a frame interval neither repeats nor drops a frame.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from ._deps import import_av, import_decord
from .damage import decode_tolerant
from .errors import VideoError
from .fit import RESIZE_FILTER, Fit, FitPlan, check_fit, check_size, fit_frame, place, plan_fit
from .probe import VideoInfo, probe

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: Decoder threads (0 lets the decoder choose from the CPU count).
DECODE_THREADS = 0
#: Differences of decord's float32 timestamps below this many seconds count as ties.
_TIMESTAMP_SLACK = 1e-4

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each yielded frame."""


def planned_frame_count(info: VideoInfo, stride: int = 1, max_frames: int | None = None) -> int:
    """How many frames ``iter_frames(info.path, stride=stride, max_frames=max_frames)`` yields.

    Computed from the probe alone, without decoding: ``min(ceil(frame_count / stride), max_frames)``.
    """
    _check_stride(stride, max_frames)
    count = math.ceil(info.frame_count / stride)
    return count if max_frames is None else min(count, max_frames)


def iter_frames(
    path: str | os.PathLike[str],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    fit: Fit = "crop",
    backend: Backend = "auto",
    info: VideoInfo | None = None,
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
    """Stream a clip's frames as upright RGB arrays.

    Args:
        path: a local video file, or a PNG-sequence folder written by ``VideoWriter(codec="png")``.
            (Remote artifacts: fetch them with ``storage.ArtifactStore.get_file`` first.)
        stride: keep every ``stride``-th frame; the frames play at ``info.fps / stride``.
        max_frames: stop after this many output frames (decoding stops too).
        size: output ``(height, width)``; None keeps the display size.
        fit: how to reach ``size``: ``"crop"`` (center crop), ``"pad"`` (black bars) or
            ``"stretch"``; see `fit_frame`.
        backend: ``"decord"``, ``"pyav"``, or ``"auto"`` (decord when installed and able to read
            the file, else PyAV).
        info: the clip's `probe` result, if already known (saves a pass over the file).
        progress: optional ``progress(done, total)`` callback.

    Arguments are checked and the clip probed when this is called, not at the first frame.
    Raises `VideoError` for unreadable input or when the file yields fewer frames than probed.

    Shapes: yields (H, W, 3) uint8 RGB, H, W = ``size`` or (info.height, info.width);
    `planned_frame_count` of them.
    """
    _check_stride(stride, max_frames)
    size = check_size(size)
    check_fit(fit)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    info = probe(path) if info is None else info
    total = planned_frame_count(info, stride, max_frames)
    plan = None if size is None else plan_fit((info.height, info.width), size, fit)
    if path.is_dir():
        frames = _sequence_frames(path, stride, total, plan)
    else:
        frames = _video_frames(path, info, stride, total, backend, plan)
    return _deliver(frames, path, total, progress)


def _check_stride(stride: int, max_frames: int | None) -> None:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be None or an int >= 1, got {max_frames!r}")


def _deliver(
    frames: Iterator[np.ndarray], path: Path, total: int, progress: Progress | None
) -> Iterator[np.ndarray]:
    done = 0
    try:
        for frame in frames:
            yield frame
            done += 1
            if progress is not None:
                progress(done, total)
            if done == total:
                return
    finally:
        frames.close()  # type: ignore[attr-defined]  # release the decoder now, not at GC
    raise VideoError(path, f"decoding stopped after {done} of {total} planned frames")


def _grid_times(info: VideoInfo, stride: int, total: int) -> Iterator[Fraction]:
    """Seconds after the first frame at which each output frame of a VFR clip is sampled."""
    step = Fraction(stride) / info.fps
    return (j * step for j in range(total))


def _nearest(starts: np.ndarray, target: float) -> int:
    """Index of the timestamp nearest to ``target`` in sorted ``starts`` (earlier on a tie)."""
    after = int(np.searchsorted(starts, target, side="left"))
    if after == 0:
        return 0
    if after == len(starts):
        return after - 1
    before = after - 1
    # decord's timestamps are float32: near-ties count as ties.
    return before if target - starts[before] <= starts[after] - target + _TIMESTAMP_SLACK else after


class _DecordUnusable(Exception):
    """decord cannot be trusted with this file; PyAV decodes it instead."""


def _fitted(frame: np.ndarray, plan: FitPlan | None) -> np.ndarray:
    return frame if plan is None else fit_frame(frame, plan.size, plan.fit)


def _video_frames(
    path: Path, info: VideoInfo, stride: int, total: int, backend: str, plan: FitPlan | None
) -> Iterator[np.ndarray]:
    if backend != "pyav":
        try:
            reader = _open_decord(path, info)
        except _DecordUnusable as exc:
            if backend == "decord":
                raise VideoError(path, f"decord cannot decode this file: {exc}") from exc
            logger.info("%s: decoding with PyAV (%s)", path, exc)
        else:
            yield from _decord_frames(reader, path, info, stride, total, plan)
            return
    yield from _pyav_frames(path, info, stride, total, plan)


def _open_decord(path: Path, info: VideoInfo) -> Any:
    decord = import_decord()
    if decord is None:
        raise _DecordUnusable("decord is not installed")
    if info.damaged:
        raise _DecordUnusable("the file is truncated or damaged")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=DECODE_THREADS)
        count = len(reader)
        first_shape = reader[0].shape if count else None
        reader.seek(0)
    except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
        raise _DecordUnusable(f"open failed: {exc}") from exc
    if count != info.source_frame_count:
        raise _DecordUnusable(f"it counts {count} frames, the probe {info.source_frame_count}")
    if first_shape is None or tuple(first_shape[:2]) != (info.height, info.width):
        raise _DecordUnusable(
            f"its frames are {first_shape}, the upright size is {(info.height, info.width)}"
        )
    return reader


def _decord_frames(
    reader: Any, path: Path, info: VideoInfo, stride: int, total: int, plan: FitPlan | None
) -> Iterator[np.ndarray]:
    """decord applies the display rotation itself (checked against the probe on open)."""
    if info.is_vfr:
        starts = reader.get_frame_timestamp(list(range(len(reader))))[:, 0].astype(np.float64)
        indices: Iterator[int] = (
            _nearest(starts, starts[0] + float(t)) for t in _grid_times(info, stride, total)
        )
    else:
        indices = iter(range(0, total * stride, stride))
    last_index, last_frame = -1, None
    for index in indices:
        if index == last_index and last_frame is not None:
            yield last_frame.copy()
            continue
        try:
            last_frame = _fitted(reader[index].asnumpy(), plan)
        except Exception as exc:
            raise VideoError(path, f"decord failed at source frame {index}: {exc}") from exc
        last_index = index
        yield last_frame


def _pyav_frames(
    path: Path, info: VideoInfo, stride: int, total: int, plan: FitPlan | None
) -> Iterator[np.ndarray]:
    av = import_av()
    turns = info.rotation // 90
    scale: dict[str, Any] = {}
    if plan is not None:
        # swscale scales while converting to RGB, in the coded (pre-rotation) orientation.
        height, width = plan.scaled[::-1] if turns % 2 else plan.scaled
        scale = {"width": width, "height": height, "interpolation": RESIZE_FILTER}

    def upright(frame: Any) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24", **scale)
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        return rgb if plan is None else place(rgb, plan)

    index = -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if info.damaged:  # the frames the probe found: same decoder, same settings
                stream.thread_type = "NONE"
                decoded = decode_tolerant(container, stream)
            else:
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = DECODE_THREADS
                decoded = container.decode(stream)
            if not info.is_vfr:
                last = total * stride - 1
                for index, frame in enumerate(decoded):
                    if index % stride == 0:
                        yield upright(frame)
                    if index >= last:
                        return
                return
            # VFR: each grid time takes the frame with the nearest timestamp, which is known
            # once the frame after it has been decoded.
            targets = _grid_times(info, stride, total)
            target = next(targets, None)
            origin = previous_time = Fraction(0)
            previous = None
            for index, frame in enumerate(decoded):
                if frame.pts is None:
                    raise VideoError(path, f"source frame {index} has no timestamp")
                time = frame.pts * stream.time_base
                if previous is None:
                    origin = time
                else:
                    midpoint = (previous_time + time) / 2 - origin
                    while target is not None and target <= midpoint:
                        yield upright(previous)
                        target = next(targets, None)
                if target is None:
                    return
                previous, previous_time = frame, time
            while target is not None and previous is not None:
                yield upright(previous)
                target = next(targets, None)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"cannot decode source frame {index + 1} ({exc.strerror or exc})") from exc


def _sequence_frames(folder: Path, stride: int, total: int, plan: FitPlan | None) -> Iterator[np.ndarray]:
    from .sequence import decode_png, frame_name

    for j in range(total):
        name = folder / frame_name(j * stride)
        try:
            data = name.read_bytes()
        except FileNotFoundError as exc:
            raise VideoError(name, "frame of the PNG sequence is missing") from exc
        yield _fitted(decode_png(data, name=str(name)), plan)
