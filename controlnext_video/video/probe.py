"""Probe a video: exact frame rate, frame count, display size, rotation, audio streams."""

from __future__ import annotations

import dataclasses
import os
import struct
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ._deps import import_av
from .damage import (
    PacketScan,
    decodable_run,
    declared_frames,
    decode_tolerant,
    find_damage,
    nominal_rate,
    stream_claim,
)
from .errors import DamagedVideoWarning, VideoError
from .rates import clean_rate, format_rate, parse_rate

#: Smallest and largest accepted width or height, in pixels (16K is the largest real format).
MIN_DIMENSION = 16
MAX_DIMENSION = 16384
#: Timestamp jitter tolerated before a clip counts as variable frame rate: an interval must
#: differ from the mean interval by more than one time-base tick *and* by more than this
#: fraction of the mean. (Millisecond time bases store 29.97 fps as 33/34 ms intervals; phones
#: jitter by a millisecond or two; a dropped frame doubles an interval.)
VFR_RELATIVE_TOLERANCE = 0.1

# PNG sequences written by `VideoWriter(codec="png")` carry their rate in this sidecar.
SEQUENCE_SIDECAR = "sequence.json"


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream of a clip."""

    index: int
    """Index of the stream among the file's audio streams (0 = first audio stream)."""
    codec: str
    sample_rate: int
    channels: int
    layout: str
    duration: float | None
    """Seconds, when the container states it."""
    language: str | None


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a clip. Small, frozen, JSON-able (`to_dict`/`from_dict`).

    ``frame_count`` and ``fps`` describe the frames `iter_frames` yields at stride 1: for a
    variable-frame-rate clip that is the constant-rate grid it is resampled to (see
    `iter_frames`), for a constant-rate clip the coded frames themselves.
    """

    path: str
    container: str
    """Container format name (``"mov,mp4,m4a,3gp,3g2,mj2"``, ``"matroska,webm"``, ``"png-sequence"``)."""
    codec: str
    frame_count: int
    fps: Fraction
    duration: float
    """Seconds of video: ``frame_count / fps``."""
    width: int
    """Display width, after rotation."""
    height: int
    """Display height, after rotation."""
    rotation: int
    """Counter-clockwise degrees (0, 90, 180, 270) applied to coded frames to show them upright."""
    pix_fmt: str
    is_vfr: bool
    source_frame_count: int
    """Coded frames in the stream (equals ``frame_count`` for constant-rate clips)."""
    start_time: float
    """Presentation time of the first frame, seconds: the origin for audio alignment."""
    sample_aspect_ratio: Fraction = Fraction(1)
    """Pixel aspect ratio; frames are returned as stored (non-square pixels are not corrected)."""
    audio: tuple[AudioStreamInfo, ...] = ()
    damaged: bool = False
    """The file holds less than its container declares (cut short, see `damage`): ``frame_count``
    counts the frames that decode up to the first missing one, ``fps`` is the container's
    nominal rate, and PyAV decodes it."""
    declared_frame_count: int | None = None
    """Frames the container declares (its index, or its stated duration at ``fps``), if it does."""

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; rates as ``"num/den"`` strings."""
        out = dataclasses.asdict(self)
        out["fps"] = format_rate(self.fps)
        out["sample_aspect_ratio"] = format_rate(self.sample_aspect_ratio)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoInfo:
        data = dict(data)
        data["fps"] = parse_rate(data["fps"])
        data["sample_aspect_ratio"] = parse_rate(data.get("sample_aspect_ratio", "1/1"))
        data["audio"] = tuple(AudioStreamInfo(**a) for a in data.get("audio", ()))
        return cls(**data)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a clip's timing, geometry and audio streams.

    ``path`` is a local video file, or a folder holding a PNG sequence written by
    ``VideoWriter(codec="png")``. Reads every packet header of the video stream (no decoding
    but the first frame) to count frames and check the timestamps, so its cost grows with the
    file size at disk speed, not with decode time.

    Raises `VideoError` (naming the file) for a missing file, a file that is not a video, no
    video stream, zero frames, an unknown frame rate, dimensions outside
    [`MIN_DIMENSION`, `MAX_DIMENSION`], or a rotation that is not a multiple of 90 degrees.

    A file that holds less than its container declares (cut short) is decoded once here to
    find the frames that survive: it keeps the container's rate, ``frame_count`` is what
    decodes, and a `DamagedVideoWarning` names the file (see `damage`).
    """
    path = Path(path)
    if path.is_dir():
        return _probe_sequence(path)
    if not path.is_file():
        raise VideoError(path, "no such file")
    av = import_av()
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a readable video file ({exc.strerror or exc})") from exc
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        time_base = stream.time_base
        if time_base is None or time_base <= 0:
            raise VideoError(path, "video stream has no time base")
        scan = _scan_packets(container, stream, path)
        if not scan.pts:
            raise VideoError(path, "video stream has zero frames")
        timing = _timing(stream, path, scan)
        first = _first_frame(container, stream, path)
        rotation = _rotation(first, path)
        coded_w, coded_h = first.width, first.height
        for name, value in (("width", coded_w), ("height", coded_h)):
            if not MIN_DIMENSION <= value <= MAX_DIMENSION:
                raise VideoError(
                    path,
                    f"video {name} {value} px is outside [{MIN_DIMENSION}, {MAX_DIMENSION}]",
                )
        width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
        sar = stream.sample_aspect_ratio or Fraction(1)
        return VideoInfo(
            path=str(path),
            container=container.format.name,
            codec=stream.codec_context.name,
            frame_count=timing.frame_count,
            fps=timing.fps,
            duration=float(timing.frame_count / timing.fps),
            width=width,
            height=height,
            rotation=rotation,
            pix_fmt=first.format.name,
            is_vfr=timing.is_vfr,
            source_frame_count=len(timing.pts),
            start_time=float(timing.pts[0] * time_base),
            sample_aspect_ratio=Fraction(sar) if sar > 0 else Fraction(1),
            audio=tuple(_audio_info(i, s) for i, s in enumerate(container.streams.audio)),
            damaged=timing.problem is not None,
            declared_frame_count=timing.declared,
        )


def _scan_packets(container: Any, stream: Any, path: Path) -> PacketScan:
    """The stream's packets: shown frames' sorted timestamps, count, corruption."""
    av = import_av()
    stamps: list[int] = []
    packets, corrupt = 0, False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # flush packet
            packets += 1
            corrupt = corrupt or packet.is_corrupt
            if packet.is_discard:
                continue  # a frame an edit list hides
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                raise VideoError(path, "video packets carry no timestamps")
            stamps.append(stamp)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"cannot read packets ({exc.strerror or exc})") from exc
    stamps.sort()
    return PacketScan(pts=stamps, packets=packets, corrupt=corrupt)


@dataclass(frozen=True)
class _Timing:
    pts: list[int]
    """Sorted timestamps of the frames used."""
    fps: Fraction
    is_vfr: bool
    frame_count: int
    declared: int | None
    problem: str | None
    """Why the clip counts as damaged, or None."""


def _timing(stream: Any, path: Path, scan: PacketScan) -> _Timing:
    """Which frames a clip has and at what rate, from its packets, or for a damaged clip from
    what decodes (with a `DamagedVideoWarning`)."""
    time_base = stream.time_base
    claim = stream_claim(stream)
    problem = find_damage(scan, claim, time_base, nominal_rate(stream))
    if problem is None:
        pts = scan.pts
        fps, is_vfr = _frame_rate(pts, time_base, stream, path)
    else:
        pts, fps = _surviving_frames(path, problem)
        is_vfr = _frame_rate(pts, time_base, stream, path)[1]
    # Grid frames from the first timestamp to the last, inclusive, for VFR clips. (Packet
    # durations are not used: with B-frames they follow decode order, not presentation order.)
    count = round((pts[-1] - pts[0]) * time_base * fps) + 1 if is_vfr else len(pts)
    declared = declared_frames(claim, fps)
    if problem is not None:
        of = f" of the {declared} declared" if declared else ""
        warnings.warn(
            f"{path}: truncated or damaged ({problem}): {count}{of} frames decode without a gap; "
            f"using those {count} at {fps} fps",
            DamagedVideoWarning,
            stacklevel=3,
        )
    return _Timing(pts=pts, fps=fps, is_vfr=is_vfr, frame_count=count, declared=declared, problem=problem)


def _surviving_frames(path: Path, problem: str) -> tuple[list[int], Fraction]:
    """Timestamps of a damaged clip's frames that decode up to the first missing one, and its rate."""
    av = import_av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # as `decode_tolerant` asks, and as the decoder will run
        stamps = sorted(f.pts for f in decode_tolerant(container, stream) if f.pts is not None)
        if not stamps:
            raise VideoError(path, f"truncated or damaged ({problem}): no frame decodes")
        fps = nominal_rate(stream)
        if fps is None:
            fps = _frame_rate(stamps, stream.time_base, stream, path)[0]
        return decodable_run(stamps, stream.time_base, fps), fps


def _first_frame(container: Any, stream: Any, path: Path) -> Any:
    av = import_av()
    container.seek(0)
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"cannot decode the first frame ({exc.strerror or exc})") from exc
    raise VideoError(path, "video stream has zero decodable frames")


def _rotation(frame: Any, path: Path) -> int:
    """Counter-clockwise display rotation of a decoded frame, one of 0, 90, 180, 270."""
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            a, b, _, c, d = struct.unpack("=9i", bytes(side)[:36])[:5]
            if a * d - b * c < 0:
                raise VideoError(path, "mirrored display matrix (flipped video) is not supported")
    degrees = frame.rotation % 360
    if degrees % 90:
        raise VideoError(path, f"display rotation {frame.rotation} degrees is not a multiple of 90")
    return degrees


def _frame_rate(pts: list[int], time_base: Fraction, stream: Any, path: Path) -> tuple[Fraction, bool]:
    """The working frame rate (exact where the file allows) and whether the clip is VFR."""
    if len(pts) < 2:
        stated = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not stated or stated <= 0:
            raise VideoError(path, "single-frame video with no stated frame rate")
        return clean_rate(Fraction(stated), exact=True), False
    intervals = [b - a for a, b in zip(pts, pts[1:])]
    if min(intervals) <= 0:
        raise VideoError(path, "two video frames share a timestamp")
    if len(set(intervals)) == 1:
        return clean_rate(1 / (intervals[0] * time_base), exact=True), False
    mean = Fraction(pts[-1] - pts[0], len(intervals))
    tolerance = max(Fraction(1), mean * Fraction(str(VFR_RELATIVE_TOLERANCE)))
    is_vfr = any(abs(step - mean) > tolerance for step in intervals)
    return clean_rate(1 / (mean * time_base), exact=False), is_vfr


def _audio_info(index: int, stream: Any) -> AudioStreamInfo:
    ctx = stream.codec_context
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    return AudioStreamInfo(
        index=index,
        codec=ctx.name,
        sample_rate=int(ctx.sample_rate or stream.rate or 0),
        channels=int(ctx.channels),
        layout=ctx.layout.name,
        duration=duration,
        language=stream.language,
    )


def _probe_sequence(folder: Path) -> VideoInfo:
    from .sequence import read_sequence_meta

    meta = read_sequence_meta(folder)
    return VideoInfo(
        path=str(folder),
        container="png-sequence",
        codec="png",
        frame_count=meta.frame_count,
        fps=meta.fps,
        duration=float(meta.frame_count / meta.fps),
        width=meta.width,
        height=meta.height,
        rotation=0,
        pix_fmt="rgb24",
        is_vfr=False,
        source_frame_count=meta.frame_count,
        start_time=0.0,
        audio=_sequence_audio(folder, meta.audio),
    )


def _sequence_audio(folder: Path, audio_name: str | None) -> tuple[AudioStreamInfo, ...]:
    if audio_name is None:
        return ()
    av = import_av()
    with av.open(str(folder / audio_name)) as container:
        return tuple(_audio_info(i, s) for i, s in enumerate(container.streams.audio))

