"""Encode frames to H.264 MP4, ProRes 422 HQ MOV or a PNG sequence, at an exact frame rate.

Outputs are written under a temporary name beside the target and renamed into place when the
writer closes without error: a crash or an exception never leaves a half-written file (or folder)
under the final name.

Outputs are deterministic: the same frames, audio and settings give the same file bytes in any
process and on any machine with the same FFmpeg build (see `bitexact`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

import numpy as np

from ._deps import import_av
from .audio import AudioTrack, audio_stream_count, output_sample_rate
from .bitexact import ENCODER_THREADS, MUXER_OPTIONS, make_deterministic
from .errors import VideoError
from .rates import parse_rate
from .sequence import AUDIO_NAME, SequenceMeta, check_rgb, encode_png, frame_name, write_sequence_meta

logger = logging.getLogger(__name__)

Codec = Literal["h264", "prores", "png"]
CODECS: tuple[str, ...] = get_args(Codec)

#: x264 presets, fastest to slowest.
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)
#: Default x264 constant rate factor (visually lossless for most material; lower is better).
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
#: Containers by file suffix for the video codecs.
_CONTAINERS = {
    "h264": {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"},
    "prores": {".mov": "mov"},
}
_PIX_FMT = {"h264": "yuv420p", "prores": "yuv422p10le"}
# Audio codec per container: AAC in MP4/MKV; 24-bit PCM in MOV (what edit suites expect beside
# ProRes) and beside PNG sequences (a WAV file).
_AUDIO_CODEC = {"mp4": "aac", "matroska": "aac", "mov": "pcm_s24le", "wav": "pcm_s24le"}
# Every output is tagged and converted as BT.709, limited range (HD video's standard).
_BT709 = 1
_LIMITED_RANGE = 1


@dataclass(frozen=True)
class EncodedVideo:
    """What a closed `VideoWriter` wrote."""

    path: str
    codec: str
    frame_count: int
    fps: Fraction
    width: int
    height: int
    audio_duration: float | None
    """Seconds of audio muxed in, or None when the output has no audio."""

    @property
    def duration(self) -> float:
        return float(self.frame_count / self.fps)


class VideoWriter:
    """Stream frames into a video file (or PNG sequence folder) at an exact frame rate.

    >>> with VideoWriter("out.mp4", Fraction(30000, 1001) / 2, audio_source="driving.mp4") as w:
    ...     for frame in frames:
    ...         w.write(frame)
    >>> w.result.duration

    Args:
        path: output file (``.mp4``, ``.m4v``, ``.mov``, ``.mkv`` for h264; ``.mov`` for prores) or,
            for ``codec="png"``, the folder to create.
        fps: exact output rate (Fraction, int or ``"num/den"``; floats are refused). For a render at
            ``stride`` of a probed clip use ``info.fps / stride``.
        codec: ``"h264"`` (yuv420p, ``crf``, ``preset``), ``"prores"`` (ProRes 422 HQ, 10-bit
            4:2:2, PCM audio) or ``"png"`` (lossless numbered PNGs, a ``sequence.json`` sidecar with
            the rate, and the audio as ``audio.wav``).
        crf: x264 constant rate factor, 0 (best) to 51 (default `DEFAULT_CRF`); h264 only.
        preset: x264 speed preset (default `DEFAULT_PRESET`); h264 only.
        audio_source: a file whose audio is muxed in (usually the driving clip), or None for no audio.
            A source without an audio stream gives an output without audio, not an error.
        audio_offset: seconds into the source, after its first video frame, that output time 0
            corresponds to; negative values start the output with that much silence. The audio is
            cut (or padded with silence) to the video's exact duration.
        audio_stream: which of the source's audio streams to use.
        overwrite: replace an existing output; otherwise an existing output is an error.

    Frames are (H, W, 3) uint8 RGB; all must have the size of the first one. H.264 and ProRes
    need even dimensions.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: Fraction | int | str,
        *,
        codec: Codec = "h264",
        crf: int | None = None,
        preset: str | None = None,
        audio_source: str | os.PathLike[str] | None = None,
        audio_offset: float | Fraction = 0,
        audio_stream: int = 0,
        overwrite: bool = True,
    ) -> None:
        self.path = Path(path)
        self.fps = parse_rate(fps)
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if codec != "h264" and (crf is not None or preset is not None):
            raise ValueError(f"crf and preset apply to codec 'h264' only, not {codec!r}")
        crf = DEFAULT_CRF if crf is None else crf
        preset = DEFAULT_PRESET if preset is None else preset
        if not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
        if preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {X264_PRESETS}, got {preset!r}")
        if codec != "png":
            suffix = self.path.suffix.lower()
            if suffix not in _CONTAINERS[codec]:
                raise VideoError(
                    self.path, f"codec {codec!r} needs a file ending in {sorted(_CONTAINERS[codec])}"
                )
            self._format = _CONTAINERS[codec][suffix]
        else:
            self._format = "png-sequence"
        if self.path.exists() and not overwrite:
            raise VideoError(self.path, "output exists (pass overwrite=True to replace it)")
        self._with_audio = False
        if audio_source is not None:
            if not Path(audio_source).is_file():
                raise VideoError(audio_source, "audio source does not exist")
            streams = audio_stream_count(audio_source)
            if streams and not 0 <= audio_stream < streams:
                raise VideoError(
                    audio_source, f"audio_stream={audio_stream} but the file has {streams} audio stream(s)"
                )
            if not streams:
                logger.info("%s: %s has no audio stream; writing video only", path, audio_source)
            self._with_audio = streams > 0
        self.codec: Codec = codec
        self.crf = crf
        self.preset = preset
        self.audio_source = None if audio_source is None else Path(audio_source)
        self.audio_offset = Fraction(audio_offset)
        self.audio_stream = audio_stream
        self.result: EncodedVideo | None = None
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial"
        self._container: Any = None
        self._stream: Any = None
        self._audio: AudioTrack | None = None
        self._audio_container: Any = None
        self._size: tuple[int, int] | None = None
        self._count = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._count

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one frame. Shapes: frame (H, W, 3) uint8 RGB."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        check_rgb(frame, f"frame {self._count}")
        height, width = frame.shape[:2]
        if self._size is None:
            self._open(height, width)
        elif (height, width) != self._size:
            raise ValueError(
                f"{self.path}: frame {self._count} is {height}x{width} (HxW), "
                f"earlier frames are {self._size[0]}x{self._size[1]}"
            )
        if self.codec == "png":
            (self._tmp / frame_name(self._count)).write_bytes(encode_png(frame))
        else:
            self._encode_video(frame)
        self._count += 1
        if self._audio is not None:
            self._audio.advance(Fraction(self._count) / self.fps)

    def close(self) -> EncodedVideo:
        """Finish the file (flush encoders, write audio to the exact duration) and move it into place."""
        if self._closed:
            if self.result is None:
                raise ValueError(f"{self.path}: writer was aborted")
            return self.result
        if self._count == 0:
            self.abort()
            raise VideoError(self.path, "no frames were written")
        try:
            audio_duration = None
            if self.codec != "png":
                self._container.mux(self._stream.encode(None))
            if self._audio is not None:
                audio_duration = float(self._audio.finish(Fraction(self._count) / self.fps))
            if self._audio_container is not None:
                self._audio_container.close()
                self._audio_container = None
            if self.codec == "png":
                write_sequence_meta(
                    self._tmp,
                    SequenceMeta(
                        fps=self.fps,
                        frame_count=self._count,
                        width=self._size[1],  # type: ignore[index]
                        height=self._size[0],  # type: ignore[index]
                        audio=AUDIO_NAME if self._audio is not None else None,
                    ),
                )
            else:
                self._container.close()
                self._container = None
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.result = EncodedVideo(
            path=str(self.path),
            codec=self.codec,
            frame_count=self._count,
            fps=self.fps,
            width=self._size[1],  # type: ignore[index]
            height=self._size[0],  # type: ignore[index]
            audio_duration=audio_duration,
        )
        return self.result

    def abort(self) -> None:
        """Drop everything written so far; nothing appears under the final name."""
        self._closed = True
        for closer in (self._audio, self._audio_container, self._container):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:  # the output is being thrown away anyway
                    logger.debug("%s: ignoring error while aborting: %s", self.path, exc)
        self._audio = self._audio_container = self._container = None
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            self._tmp.unlink(missing_ok=True)

    def _open(self, height: int, width: int) -> None:
        av = import_av()
        self._size = (height, width)
        if self.codec != "png" and (height % 2 or width % 2):
            raise VideoError(self.path, f"{self.codec} needs even dimensions, frames are {height}x{width} (HxW)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        audio = self._with_audio
        if self.codec == "png":
            self._tmp.mkdir()
            if audio:
                self._audio_container = av.open(
                    str(self._tmp / AUDIO_NAME), "w", format="wav", options=dict(MUXER_OPTIONS)
                )
                self._audio = self._audio_track(self._audio_container, "wav")
            return
        options = dict(MUXER_OPTIONS)
        if self._format in ("mp4", "mov"):
            options["movflags"] = "+faststart"
            options["movie_timescale"] = str(self._movie_timescale(audio))
        self._container = av.open(str(self._tmp), "w", format=self._format, options=options)
        if self.codec == "h264":
            stream = self._container.add_stream(
                "libx264", rate=self.fps, options={"crf": str(self.crf), "preset": self.preset}
            )
        else:
            stream = self._container.add_stream(
                "prores_ks", rate=self.fps, options={"profile": "hq", "vendor": "apl0"}
            )
        stream.width, stream.height = width, height
        stream.pix_fmt = _PIX_FMT[self.codec]
        ctx = stream.codec_context
        make_deterministic(ctx, threads=ENCODER_THREADS)
        ctx.time_base = 1 / self.fps
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
        ctx.color_range = _LIMITED_RANGE
        self._stream = stream
        if audio:
            self._audio = self._audio_track(self._container, self._format)

    def _movie_timescale(self, audio: bool) -> int:
        """A MOV/MP4 movie time scale in which frame and sample durations are whole ticks.

        Edit lists (written for B-frame delay and AAC priming) are counted in the movie time
        scale, by default 1/1000 s, which would round a 29.97 fps track's duration to the
        millisecond.
        """
        scale = math.lcm(self.fps.numerator, 1000)
        if audio:
            codec = _AUDIO_CODEC[self._format]
            scale = math.lcm(scale, output_sample_rate(self.audio_source, self.audio_stream, codec))  # type: ignore[arg-type]
        return scale

    def _audio_track(self, container: Any, container_format: str) -> AudioTrack:
        assert self.audio_source is not None
        return AudioTrack(
            self.audio_source,
            container,
            codec=_AUDIO_CODEC[container_format],
            offset=self.audio_offset,
            stream_index=self.audio_stream,
        )

    def _encode_video(self, frame: np.ndarray) -> None:
        av = import_av()
        rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
        yuv = rgb.reformat(
            format=_PIX_FMT[self.codec],
            dst_colorspace="ITU709",
            dst_color_range="MPEG",
        )
        yuv.pts = self._count
        yuv.time_base = 1 / self.fps
        self._container.mux(self._stream.encode(yuv))

    def _commit(self) -> None:
        if self.codec == "png" and self.path.is_dir():
            # Folders cannot be replaced atomically: move the old one aside first, so the final
            # name always holds a complete sequence or nothing.
            old = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.old"
            os.replace(self.path, old)
            os.replace(self._tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._tmp, self.path)


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: Fraction | int | str,
    **options: Any,
) -> EncodedVideo:
    """Write all ``frames`` with a `VideoWriter` (``options`` are its keyword arguments).

    Shapes: frames yields (H, W, 3) uint8 RGB.
    """
    with VideoWriter(path, fps, **options) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.result is not None
    return writer.result

