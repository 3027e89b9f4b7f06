"""Synthetic test clips made with PyAV: a frame counter in the pixels, an orientation marker,
a moving pattern, optional sine-tone audio, display rotation and variable timestamps.

Upright frame layout (height H, width W):
- top-left H/4 x H/4 square: pure red (tells which way is up);
- rows [3H/8, 5H/8): `COUNTER_BITS` black/white cells across the width, frame index in binary
  (most significant bit left);
- elsewhere: a green/blue ramp that moves with the frame index.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COUNTER_BITS = 12
DEFAULT_SIZE = (64, 96)  # (height, width), upright


def pattern(index: int, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Upright test frame ``index``. Shapes: returns (H, W, 3) uint8."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 1] = (xx * 2 + yy + 3 * index) % 200
    frame[..., 2] = 100
    marker = height // 4
    frame[:marker, :marker] = (255, 0, 0)
    top, bottom = 3 * height // 8, 5 * height // 8
    cell = width / COUNTER_BITS
    for bit in range(COUNTER_BITS):
        on = (index >> (COUNTER_BITS - 1 - bit)) & 1
        left, right = round(bit * cell), round((bit + 1) * cell)
        frame[top:bottom, left:right] = 255 if on else 0
    return frame


def read_counter(frame: np.ndarray) -> int:
    """Frame index encoded by `pattern` (frame at any size, upright, not cropped)."""
    height, width = frame.shape[:2]
    row = height // 2
    cell = width / COUNTER_BITS
    value = 0
    for bit in range(COUNTER_BITS):
        col = int((bit + 0.5) * cell)
        on = frame[row - 1 : row + 2, col - 1 : col + 2].mean() > 127
        value = value * 2 + int(on)
    return value


def is_upright(frame: np.ndarray) -> bool:
    """The red marker is in the top-left corner (and not in the others)."""
    height, width = frame.shape[:2]
    m = max(2, min(height, width) // 8)

    def red(patch: np.ndarray) -> bool:
        r, g, b = patch.reshape(-1, 3).mean(axis=0)
        return r > 180 and g < 80 and b < 80

    return red(frame[:m, :m]) and not any(
        red(p) for p in (frame[:m, -m:], frame[-m:, :m], frame[-m:, -m:])
    )


def tone(seconds: float, rate: int, hz: float = 440.0, channels: int = 2) -> np.ndarray:
    """Sine tone. Shapes: returns (channels, round(seconds * rate)) float32."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def _mux_audio(container: av.container.OutputContainer, stream, samples: np.ndarray, rate: int) -> None:
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    for start in range(0, samples.shape[1], 1024):
        chunk = np.ascontiguousarray(samples[:, start : start + 1024])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_clip(
    path: Path,
    *,
    frames: int,
    fps: Fraction | int = 25,
    size: tuple[int, int] = DEFAULT_SIZE,
    rotation: int = 0,
    timestamps: Sequence[Fraction] | None = None,
    audio_seconds: float | None = None,
    audio_rate: int = 48000,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> Path:
    """Write a clip of `pattern` frames 0..frames-1.

    ``size`` is the upright (display) size; with ``rotation`` (counter-clockwise degrees) the coded
    frames are turned the other way and a display matrix is written so players show them upright.
    ``timestamps`` (seconds, one per frame) make a variable-frame-rate clip. ``audio_seconds`` adds
    a 440 Hz stereo AAC tone of that length (use a .mkv/.mp4/.mov name).
    """
    turns = (rotation // 90) % 4
    coded_h, coded_w = (size[1], size[0]) if turns % 2 else size
    options = {"crf": "12", "preset": "veryfast"} if options is None and codec == "libx264" else (options or {})
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        time_base = Fraction(1, 90000) if timestamps is not None else 1 / Fraction(fps)
        stream.codec_context.time_base = time_base
        audio_stream = None
        if audio_seconds is not None:
            audio_stream = container.add_stream("aac", rate=audio_rate, layout="stereo")
        for i in range(frames):
            coded = np.ascontiguousarray(np.rot90(pattern(i, size), -turns))
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pts = i if timestamps is None else round(timestamps[i] / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            _mux_audio(container, audio_stream, tone(audio_seconds, audio_rate), audio_rate)
    return path


def make_tone_file(
    path: Path, seconds: float, rate: int = 44100, hz: float = 440.0, lead_silence: float = 0.0
) -> Path:
    """A WAV file: ``lead_silence`` seconds of silence, then a stereo sine tone of ``seconds``."""
    samples = tone(seconds, rate, hz)
    samples = np.concatenate([np.zeros((2, round(lead_silence * rate)), np.float32), samples], axis=1)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        _mux_audio(container, stream, samples, rate)
    return path


def loud(samples: np.ndarray, rate: int, window: float = 0.01) -> np.ndarray:
    """Per-window flag: RMS above -30 dBFS. Shapes: (channels, n) -> (n // window_samples,) bool."""
    size = round(window * rate)
    mono = samples.mean(axis=0)[: samples.shape[1] // size * size].reshape(-1, size)
    return np.sqrt((mono**2).mean(axis=1)) > 10 ** (-30 / 20)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak of the first channel."""
    spectrum = np.abs(np.fft.rfft(samples[0]))
    return float(np.fft.rfftfreq(samples.shape[1], 1 / rate)[spectrum.argmax()])


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """All samples of the first audio stream. Shapes: returns ((channels, n) float32, rate)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
        return np.concatenate(chunks, axis=1), stream.codec_context.sample_rate


def container_durations(path: Path) -> dict[str, float | None]:
    """Stream durations as stated by the container, seconds."""
    out: dict[str, float | None] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            if stream.type in ("video", "audio"):
                duration = None if stream.duration is None else float(stream.duration * stream.time_base)
                out.setdefault(stream.type, duration)
    return out
