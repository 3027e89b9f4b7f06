"""Fixtures for video tests: synthetic clips, made once per session."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from .clips import make_clip, make_tone_file

# The four rates the issue asks to round-trip.
RATES = {
    "24": Fraction(24),
    "25": Fraction(25),
    "29.97": Fraction(30000, 1001),
    "23.976": Fraction(24000, 1001),
}
CLIP_FRAMES = 31  # odd, so stride 2 has a partial last step
TONE_SECONDS = 2.0  # longer than every clip: the writer must trim it


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def rate_clips(clip_dir: Path) -> dict[str, Path]:
    """One 31-frame H.264 MP4 per rate in `RATES`, each with a 2 s stereo AAC tone."""
    return {
        name: make_clip(clip_dir / f"rate-{name}.mp4", frames=CLIP_FRAMES, fps=fps, audio_seconds=TONE_SECONDS)
        for name, fps in RATES.items()
    }


@pytest.fixture(scope="session")
def silent_clip(clip_dir: Path) -> Path:
    """25 fps, 20 frames, no audio stream."""
    return make_clip(clip_dir / "silent.mp4", frames=20, fps=25)


@pytest.fixture(scope="session")
def tone_wav(clip_dir: Path) -> Path:
    """3 s stereo 44.1 kHz tone, no video."""
    return make_tone_file(clip_dir / "tone.wav", 3.0)
