"""Carry a source's audio into an output container, aligned to the output video's timeline.

Output time 0 is source time ``origin + offset``, where ``origin`` is the source's first video
frame (0 for an audio-only file). A positive offset skips that much of the source's audio; a
negative one starts the output with silence (used when output frame 0 is an extra frame that has
no source counterpart). The track ends exactly at the video's duration: cut there, or padded with
silence if the source's audio is shorter. Samples are streamed; memory does not grow with length.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import import_av
from .bitexact import make_deterministic
from .errors import VideoError

logger = logging.getLogger(__name__)

#: AAC bit rate per channel (192 kb/s for stereo).
AAC_BITRATE_PER_CHANNEL = 96_000
#: Sample rates the AAC encoder accepts; others are resampled to 48 kHz.
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
#: Channel layouts kept as they are in AAC; anything else is downmixed to stereo.
AAC_LAYOUTS = ("mono", "stereo", "3.0", "4.0", "5.0", "5.1", "5.0(side)", "5.1(side)", "7.1")
#: Working sample format: planar float, channels first.
_WORK_FORMAT = "fltp"


def audio_stream_count(path: str | os.PathLike[str]) -> int:
    """How many audio streams the file has."""
    av = import_av()
    try:
        with av.open(os.fspath(path)) as container:
            return len(container.streams.audio)
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"audio source is not a readable media file ({exc.strerror or exc})") from exc


def output_sample_rate(source: str | os.PathLike[str], stream_index: int, codec: str) -> int:
    """Sample rate `AudioTrack` writes for this source and codec."""
    av = import_av()
    with av.open(os.fspath(source)) as container:
        return _output_format(container.streams.audio[stream_index], codec)[0]


def _output_format(in_stream: Any, codec: str) -> tuple[int, str]:
    """(sample rate, channel layout) of the output track: the source's, where the codec allows."""
    rate = int(in_stream.codec_context.sample_rate)
    layout = in_stream.codec_context.layout.name
    if codec == "aac":
        rate = rate if rate in AAC_SAMPLE_RATES else 48000
        layout = layout if layout in AAC_LAYOUTS else "stereo"
    return rate, layout


class AudioTrack:
    """Streams one audio stream of ``source`` into ``output`` (an open PyAV output container).

    Call `advance` as video is written (keeps the file interleaved), then `finish` with the
    final video duration. The output stream is added on construction, so build this before any
    packet is muxed.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        output: Any,
        *,
        codec: str,
        offset: Fraction,
        stream_index: int = 0,
    ) -> None:
        av = import_av()
        self.source = Path(source)
        self._output = output
        try:
            self._input = av.open(str(self.source))
        except av.error.FFmpegError as exc:
            raise VideoError(self.source, f"audio source is not readable ({exc.strerror or exc})") from exc
        streams = self._input.streams.audio
        if not 0 <= stream_index < len(streams):
            self._input.close()
            raise VideoError(
                self.source, f"audio_stream={stream_index} but the file has {len(streams)} audio stream(s)"
            )
        in_stream = streams[stream_index]
        rate, layout = _output_format(in_stream, codec)
        self.sample_rate = rate
        self.layout = layout
        self._stream = output.add_stream(codec, rate=rate, layout=layout)
        make_deterministic(self._stream.codec_context, threads=1)
        if codec == "aac":
            self._stream.bit_rate = AAC_BITRATE_PER_CHANNEL * self._stream.codec_context.layout.nb_channels
        self._channels = self._stream.codec_context.layout.nb_channels
        origin = Fraction(0)
        if self._input.streams.video:
            video = self._input.streams.video[0]
            if video.start_time is not None and video.time_base is not None:
                origin = video.start_time * video.time_base
        self._origin = origin + offset
        self._resampler = av.AudioResampler(format=_WORK_FORMAT, layout=layout, rate=rate)
        self._chunks = self._decoded_chunks(in_stream)
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._written = 0
        self._exhausted = False

    def advance(self, until: Fraction) -> None:
        """Encode audio up to output time ``until`` (seconds), if the source has it."""
        self._write_until(self._sample_index(until), pad=False)

    def finish(self, duration: Fraction) -> Fraction:
        """Write the track up to exactly ``duration`` seconds, flush it, close the source.

        Returns the track's duration in seconds.
        """
        target = self._sample_index(duration)
        self._write_until(target, pad=True)
        self._mux(self._stream.encode(None))
        self.close()
        return Fraction(self._written, self.sample_rate)

    def close(self) -> None:
        self._chunks.close()
        self._input.close()

    def _sample_index(self, seconds: Fraction) -> int:
        return round(Fraction(seconds) * self.sample_rate)

    def _decoded_chunks(self, in_stream: Any) -> Iterator[np.ndarray]:
        """Resampled audio as (channels, n) float32 arrays, starting at output time 0."""
        av = import_av()
        position: int | None = None  # output sample index of the next source sample
        try:
            for frame in self._input.decode(in_stream):
                if position is None:
                    start = frame.pts * frame.time_base if frame.pts is not None else Fraction(0)
                    position = round((start - self._origin) * self.sample_rate)
                    if position > 0:  # the source starts after output time 0
                        yield np.zeros((self._channels, position), dtype=np.float32)
                for out in self._resampler.resample(frame):
                    samples = out.to_ndarray()
                    if position < 0:  # before output time 0
                        drop = min(-position, samples.shape[1])
                        samples = samples[:, drop:]
                        position += drop
                    if samples.shape[1]:
                        yield samples
            for out in self._resampler.resample(None):
                yield out.to_ndarray()
        except av.error.FFmpegError as exc:
            raise VideoError(self.source, f"cannot decode audio ({exc.strerror or exc})") from exc

    def _write_until(self, target: int, *, pad: bool) -> None:
        needed = target - self._written
        while self._pending_samples < needed and not self._exhausted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._exhausted = True
            else:
                self._pending.append(chunk)
                self._pending_samples += chunk.shape[1]
        take = min(needed, self._pending_samples)
        if take > 0:
            merged = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
            self._encode(merged[:, :take])
            rest = merged[:, take:]
            self._pending = [rest] if rest.shape[1] else []
            self._pending_samples = rest.shape[1]
        if pad and needed > take:
            self._encode(np.zeros((self._channels, needed - take), dtype=np.float32))

    def _encode(self, samples: np.ndarray) -> None:
        av = import_av()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format=_WORK_FORMAT, layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = self._written
        self._written += samples.shape[1]
        self._mux(self._stream.encode(frame))

    def _mux(self, packets: list[Any]) -> None:
        self._output.mux(packets)
