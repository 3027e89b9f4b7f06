"""Same frames and settings, same file: encodes do not depend on the process, its history or
the CPUs it may use."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from controlnext_video.video import iter_frames, write_side_by_side, write_video

from .clips import make_tone_file, pattern

ROOT = Path(__file__).resolve().parents[2]
SIZE = (128, 192)
FRAMES = 24
FPS = 24
OUTPUTS = {"h264": "out.mp4", "prores": "out.mov"}

# Encodes one output in a fresh interpreter, pinned to one CPU (a worker with a smaller CPU set).
_SUBPROCESS_ENCODE = """
import os, sys
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from tests.video.test_determinism import encode
encode(sys.argv[1], sys.argv[2], sys.argv[3] or None)
"""


def frames() -> Iterator[np.ndarray]:
    """Test frames with texture and motion, so the encoder has real decisions to make."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (*SIZE, 3), dtype=np.uint8)
    for i in range(FRAMES):
        yield pattern(i, SIZE) // 2 + np.roll(noise, 3 * i, axis=1)


def encode(path: str, codec: str, audio: str | None) -> str:
    """Encode `frames` to ``path``; returns the file's SHA-256."""
    write_video(path, frames(), FPS, codec=codec, audio_source=audio)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def cpus(count: int | None) -> Iterator[None]:
    """Run the block allowed on ``count`` CPUs only (None: all), where the OS allows it."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(allowed)[:count]))
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def other_work(tmp_path: Path, audio: Path, k: int) -> None:
    """What a worker does between two encodes: decoding, resizing, other outputs."""
    clip = tmp_path / f"other-{k}.mp4"
    write_video(clip, (pattern(i, (64, 96)) for i in range(6 + k)), 25, audio_source=audio, preset="veryfast")
    decoded = list(iter_frames(clip, size=(48, 80), fit="pad"))
    write_side_by_side(tmp_path / f"review-{k}.mp4", pattern(0), decoded, decoded, 25, audio_source=clip)


@pytest.mark.parametrize(
    ("codec", "with_audio"), [("h264", False), ("h264", True), ("prores", True)], ids=["h264", "h264+aac", "prores+pcm"]
)
def test_same_frames_and_settings_give_the_same_bytes_in_any_process(
    tmp_path: Path, codec: str, with_audio: bool
) -> None:
    audio = make_tone_file(tmp_path / "tone.wav", 1.5)
    source = str(audio) if with_audio else None
    digests = []
    for k in range(8):
        with cpus(1 if k % 2 else None):  # as a worker pinned to one core would
            digests.append(encode(str(tmp_path / f"{k}-{OUTPUTS[codec]}"), codec, source))
        other_work(tmp_path, audio, k)
    fresh = tmp_path / f"fresh-{OUTPUTS[codec]}"
    subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_ENCODE, str(fresh), codec, source or ""], check=True, cwd=ROOT,
    )
    digests.append(hashlib.sha256(fresh.read_bytes()).hexdigest())
    assert len(set(digests)) == 1, digests
