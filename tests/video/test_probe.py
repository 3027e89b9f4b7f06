from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from controlnext_video.video import VideoError, VideoInfo, probe

from .clips import make_clip
from .conftest import CLIP_FRAMES, RATES, TONE_SECONDS


@pytest.mark.parametrize("name", list(RATES))
def test_probe_reports_exact_rate_count_duration_and_audio(rate_clips: dict[str, Path], name: str) -> None:
    info = probe(rate_clips[name])
    assert info.fps == RATES[name]
    assert isinstance(info.fps, Fraction)
    assert info.frame_count == info.source_frame_count == CLIP_FRAMES
    assert info.duration == pytest.approx(float(CLIP_FRAMES / RATES[name]))
    assert (info.width, info.height, info.rotation) == (96, 64, 0)
    assert info.pix_fmt == "yuv420p" and info.codec == "h264"
    assert not info.is_vfr
    (audio,) = info.audio
    assert (audio.codec, audio.sample_rate, audio.channels, audio.layout) == ("aac", 48000, 2, "stereo")
    assert audio.duration == pytest.approx(TONE_SECONDS, abs=0.03)


def test_millisecond_time_base_still_gives_the_exact_ntsc_rate(clip_dir: Path) -> None:
    # Matroska stores 29.97 fps as 33/34 ms steps; the rate must still be 30000/1001 and CFR.
    path = make_clip(clip_dir / "ntsc.mkv", frames=40, fps=Fraction(30000, 1001))
    with av.open(str(path)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 1000)
    info = probe(path)
    assert info.fps == Fraction(30000, 1001)
    assert not info.is_vfr
    assert info.frame_count == 40


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_gives_display_size(clip_dir: Path, rotation: int) -> None:
    path = make_clip(clip_dir / f"rotated-{rotation}.mp4", frames=4, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.height, info.width) == (64, 96)  # upright, whatever the coded orientation


def test_variable_frame_rate_is_detected_and_resampled_on_average_rate(clip_dir: Path) -> None:
    # Frames every 1/30 s with every fifth interval three times as long (dropped frames).
    stamps, t = [], Fraction(0)
    for i in range(30):
        stamps.append(t)
        t += Fraction(3, 30) if i % 5 == 4 else Fraction(1, 30)
    info = probe(make_clip(clip_dir / "vfr-probe.mp4", frames=30, timestamps=stamps))
    assert info.is_vfr
    assert info.source_frame_count == 30
    span = float(stamps[-1] - stamps[0])
    assert float(info.fps) == pytest.approx(29 / span, rel=1e-3)
    assert info.duration == pytest.approx(span + 1 / float(info.fps), abs=1.5 / float(info.fps))


def test_jittery_timestamps_are_constant_rate_snapped_to_standard(clip_dir: Path) -> None:
    # Phone-like jitter of +-1 ms around 30 fps on a 90 kHz clock.
    rng = np.random.default_rng(0)
    stamps = [Fraction(i, 30) + Fraction(int(rng.integers(-90, 91)), 90000) for i in range(40)]
    info = probe(make_clip(clip_dir / "jitter.mp4", frames=40, timestamps=stamps))
    assert not info.is_vfr
    assert info.fps == 30


def test_info_round_trips_through_json(rate_clips: dict[str, Path]) -> None:
    info = probe(rate_clips["29.97"])
    data = json.loads(json.dumps(info.to_dict()))
    assert data["fps"] == "30000/1001"
    assert VideoInfo.from_dict(data) == info


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="nope.mp4: no such file"):
        probe(tmp_path / "nope.mp4")


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a readable video file"):
        probe(path)


def test_audio_only_file_has_no_video_stream(tone_wav: Path) -> None:
    with pytest.raises(VideoError, match=r"tone\.wav: no video stream \(streams: audio\)"):
        probe(tone_wav)


def test_video_stream_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        container.start_encoding()  # header only, no packets
    with pytest.raises(VideoError, match=r"empty\.avi: video stream has zero frames"):
        probe(path)


def test_absurd_dimensions(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "tiny.mp4", frames=3, size=(8, 96))
    with pytest.raises(VideoError, match=r"tiny\.mp4: video height 8 px is outside \[16, 16384\]"):
        probe(path)


def test_folder_that_is_not_a_sequence(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not a PNG sequence"):
        probe(tmp_path)
