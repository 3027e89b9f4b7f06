"""Minimal streaming video I/O for the pose tools (PyAV), kept small and private.

The project's shared video module will replace this; the two entry points below are all the
pose package uses: `open_clip` (probe plus a frame iterator with stride and limit) and
`Mp4Writer` (H.264 writing, one frame at a time). Neither holds more than one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from pose.errors import PoseInputError, require


@dataclass(frozen=True)
class ClipInfo:
    path: Path
    width: int  # after applying the stream's rotation metadata
    height: int
    fps: Fraction
    frame_count: int | None  # from the container; None when it does not say
    rotation: int  # degrees, counter-clockwise, as stored in the stream's display matrix


def _open(path: Path):
    av = require("av", "Reading the driving video")
    if not path.is_file():
        raise PoseInputError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise PoseInputError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise PoseInputError(f"{path} has no video stream")
    return av, container, container.streams.video[0]


def _rotate(image: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image, k=(rotation // 90) % 4)) if rotation % 360 else image


def probe_clip(path: str | Path) -> ClipInfo:
    path = Path(path)
    av, container, stream = _open(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise PoseInputError(f"{path}: the video stream has no frame rate")
        rotation = 0
        try:
            first = next(container.decode(stream))
            rotation = int(round(getattr(first, "rotation", 0) or 0))
        except StopIteration:
            raise PoseInputError(f"{path}: the video stream has no decodable frame") from None
        except av.error.FFmpegError as exc:
            raise PoseInputError(f"{path}: cannot decode the first frame: {exc}") from exc
        w, h = stream.codec_context.width, stream.codec_context.height
        if rotation % 180:
            w, h = h, w
        return ClipInfo(
            path=path, width=w, height=h, fps=Fraction(rate),
            frame_count=int(stream.frames) if stream.frames else None, rotation=rotation,
        )
    finally:
        container.close()


def iter_frames(path: str | Path, stride: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(source frame index, (H, W, 3) uint8 RGB) for frames 0, stride, 2*stride, ...,
    at most max_frames of them. Decoding errors name the file and the frame."""
    if int(stride) != stride or stride < 1:
        raise PoseInputError(f"stride must be a positive integer, got {stride!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise PoseInputError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    path = Path(path)
    av, container, stream = _open(path)
    stream.thread_type = "AUTO"
    index, taken = 0, 0
    try:
        frames = container.decode(stream)
        while max_frames is None or taken < max_frames:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                raise PoseInputError(f"{path}: decoding failed at frame {index}: {exc}") from exc
            if index % stride == 0:
                image = frame.to_ndarray(format="rgb24")
                yield index, _rotate(image, int(round(getattr(frame, "rotation", 0) or 0)))
                taken += 1
            index += 1
    finally:
        container.close()


class Mp4Writer:
    """H.264 (yuv420p) MP4 writer fed one RGB frame at a time; odd sizes are padded by a pixel."""

    def __init__(self, path: str | Path, fps: Fraction, width: int, height: int, crf: int = 20) -> None:
        av = require("av", "Writing the preview video")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = int(width), int(height)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps))
        self._stream.width = self.width + self.width % 2
        self._stream.height = self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._av = av

    def write(self, image: np.ndarray) -> None:
        if image.shape != (self.height, self.width, 3) or image.dtype != np.uint8:
            raise PoseInputError(
                f"Mp4Writer({self.path}): frame must be ({self.height}, {self.width}, 3) uint8, "
                f"got {image.shape} {image.dtype}"
            )
        if (self._stream.height, self._stream.width) != image.shape[:2]:
            pad = ((0, self._stream.height - self.height), (0, self._stream.width - self.width), (0, 0))
            image = np.pad(image, pad)
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
