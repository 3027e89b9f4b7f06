"""Truncated and damaged clips: what decodes, checked against what the container declares.

A clip cut short (an interrupted download or copy) still opens when its index sits at the front
(an MP4 written with ``movflags=+faststart``) or when it needs none (Matroska, WebM). Only the
packets before the cut are there, and with B-frames the last of them leave holes in the
timeline: averaged over the holes, a 24 fps clip cut in half measured 112/5 fps.

Evidence of damage, all from the container's own claims:
- its index declares more frames than the file holds (MP4/MOV sample tables);
- a packet is cut short (FFmpeg flags it corrupt);
- the stream's stated duration (a Matroska track's DURATION tag) runs more than
  `DURATION_SLACK_FRAMES` frame intervals past the end of its last frame.

A damaged clip keeps the container's nominal frame rate, and its frames are those that decode
from the start up to the first missing one (`decodable_run`): frames after a hole depend on lost
data. `probe` warns with `DamagedVideoWarning`, naming the file and how many of the declared
frames are used, and raises `VideoError` when none decodes. Decoding damaged clips is always
PyAV's, single-threaded, and skips the packets it cannot use (`decode_tolerant`), so the probe
and the decoder see the same frames.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ._deps import import_av
from .rates import clean_rate

#: How far (in frame intervals) a stated stream duration may run past the last frame's end
#: before the clip counts as cut short (a last frame held a little longer is normal).
DURATION_SLACK_FRAMES = 2
#: A gap between consecutive decoded frames of more than this many frame intervals is a hole.
HOLE_INTERVALS = Fraction(3, 2)

_DURATION_TAG = re.compile(r"^(\d+):(\d{2}):(\d{2})(?:\.(\d+))?$")


@dataclass(frozen=True)
class PacketScan:
    """The video packets of a file, read without decoding."""

    pts: list[int]
    """Sorted presentation timestamps of the frames that are shown (edit lists applied)."""
    packets: int
    """Packets with data, hidden ones included (what an index counts)."""
    corrupt: bool
    """Some packet is flagged corrupt (typically the last one, cut short)."""


@dataclass(frozen=True)
class Claim:
    """What a container declares about its video stream."""

    frames: int | None
    """Frames its index lists (MP4/MOV), or None where it keeps no count."""
    duration: Fraction | None
    """Seconds the stream states it lasts, or None."""


def stream_claim(stream: Any) -> Claim:
    """The frame count and duration a video stream declares."""
    frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
    duration = None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        duration = Fraction(stream.duration) * stream.time_base
    else:
        match = _DURATION_TAG.match(str(stream.metadata.get("DURATION", "")).strip())
        if match:
            hours, minutes, seconds, fraction = match.groups()
            duration = Fraction(int(hours) * 3600 + int(minutes) * 60 + int(seconds))
            duration += Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0
    return Claim(frames=frames, duration=duration)


def nominal_rate(stream: Any) -> Fraction | None:
    """The frame rate the container states for the stream (its average), or None."""
    for stated in (stream.average_rate, stream.guessed_rate):
        if stated and stated > 0:
            return clean_rate(Fraction(stated), exact=True)
    return None


def find_damage(scan: PacketScan, claim: Claim, time_base: Fraction, fps: Fraction | None) -> str | None:
    """Why the packets fall short of the container's claim, or None when they do not."""
    if claim.frames is not None and scan.packets < claim.frames:
        return f"its index lists {claim.frames} frames, the file holds {scan.packets}"
    if scan.corrupt:
        return "a packet is cut short"
    if claim.duration is not None and fps is not None and scan.pts:
        covered = (scan.pts[-1] - scan.pts[0]) * time_base + 1 / fps
        if claim.duration - covered > DURATION_SLACK_FRAMES / fps:
            return f"it states {float(claim.duration):.3f} s, its frames cover {float(covered):.3f} s"
    return None


def declared_frames(claim: Claim, fps: Fraction) -> int | None:
    """The frame count a container claims: its index's, or its duration at ``fps``."""
    if claim.frames is not None:
        return claim.frames
    return None if claim.duration is None else round(claim.duration * fps)


def decode_tolerant(container: Any, stream: Any) -> Iterator[Any]:
    """Decode every frame that can be, skipping cut-short packets and packets the decoder rejects.

    Set ``stream.thread_type = "NONE"`` before calling, so that errors (and so the frames
    returned) do not depend on thread timing.
    """
    av = import_av()
    for packet in container.demux(stream):
        if packet.is_corrupt:
            continue
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue  # the frames that need this packet are lost; later ones may still decode
        yield from frames


def decodable_run(pts: list[int], time_base: Fraction, fps: Fraction) -> list[int]:
    """The leading timestamps of sorted ``pts`` up to the first hole (a missing frame)."""
    limit = HOLE_INTERVALS / fps
    for i in range(1, len(pts)):
        if (pts[i] - pts[i - 1]) * time_base > limit:
            return pts[:i]
    return pts
