from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from controlnext_video.video import VideoError, iter_frames, planned_frame_count, probe
from controlnext_video.video._deps import import_decord

from .clips import is_upright, make_clip, pattern, read_counter
from .conftest import CLIP_FRAMES, RATES

needs_decord = pytest.mark.skipif(import_decord() is None, reason="decord is not installed (x86_64 wheels only)")
BACKENDS = [pytest.param("decord", marks=needs_decord), "pyav"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("name", list(RATES))
def test_stride_selects_every_nth_frame(rate_clips: dict[str, Path], name: str, stride: int, backend: str) -> None:
    path = rate_clips[name]
    frames = list(iter_frames(path, stride=stride, backend=backend))
    assert [read_counter(f) for f in frames] == list(range(0, CLIP_FRAMES, stride))
    assert len(frames) == planned_frame_count(probe(path), stride)
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoded_pixels_match_the_source(rate_clips: dict[str, Path], backend: str) -> None:
    frame = next(iter_frames(rate_clips["25"], backend=backend))
    error = np.abs(frame.astype(int) - pattern(0).astype(int))
    assert np.median(error) <= 2  # crf 12 yuv420p: chroma edges blur, the bulk is exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_frames_stops_early(rate_clips: dict[str, Path], backend: str) -> None:
    info = probe(rate_clips["24"])
    frames = list(iter_frames(info.path, stride=2, max_frames=5, backend=backend, info=info))
    assert [read_counter(f) for f in frames] == [0, 2, 4, 6, 8]
    assert planned_frame_count(info, 2, 5) == 5
    assert planned_frame_count(info, 2, 100) == 16


def test_progress_callback_sees_every_frame(rate_clips: dict[str, Path]) -> None:
    seen: list[tuple[int, int]] = []
    list(iter_frames(rate_clips["25"], stride=4, progress=lambda done, total: seen.append((done, total))))
    assert seen == [(i, 8) for i in range(1, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(clip_dir: Path, rotation: int, backend: str) -> None:
    path = clip_dir / f"upright-{rotation}.mp4"
    if not path.exists():
        make_clip(path, frames=6, rotation=rotation)
    frames = list(iter_frames(path, backend=backend))
    assert all(f.shape == (64, 96, 3) for f in frames)
    assert all(is_upright(f) for f in frames)
    assert [read_counter(f) for f in frames] == list(range(6))


@pytest.fixture(scope="session")
def vfr_clip(clip_dir: Path) -> tuple[Path, list[Fraction]]:
    """Phone-like VFR: ~30 fps with dropped frames (long gaps) and a burst at 60 fps."""
    stamps, t = [], Fraction(0)
    for i in range(60):
        stamps.append(t)
        if i % 7 == 6:
            t += Fraction(3, 30)  # two frames dropped
        elif 30 <= i < 40:
            t += Fraction(1, 60)  # burst
        else:
            t += Fraction(1, 30)
    return make_clip(clip_dir / "vfr.mp4", frames=60, timestamps=stamps), stamps


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_variable_frame_rate_is_resampled_by_timestamp(
    vfr_clip: tuple[Path, list[Fraction]], stride: int, backend: str
) -> None:
    path, stamps = vfr_clip
    info = probe(path)
    assert info.is_vfr
    frames = list(iter_frames(path, stride=stride, backend=backend))
    assert len(frames) == planned_frame_count(info, stride)
    out_fps = info.fps / stride
    for j, frame in enumerate(frames):
        t = j / out_fps
        shown = read_counter(frame)
        # The frame shown is the one whose timestamp is nearest to the grid time.
        best = min(abs(s - t) for s in stamps)
        assert abs(stamps[shown] - t) == best, (j, shown)
    # Timing: the output spans the source's duration to within one output frame.
    span = stamps[-1] + Fraction(1, 30)
    assert abs(Fraction(len(frames)) / out_fps - span) <= 1 / out_fps


@pytest.mark.parametrize("backend", BACKENDS)
def test_jittered_timestamps_neither_drop_nor_repeat(clip_dir: Path, backend: str) -> None:
    # Intervals jitter by up to 15% (beyond the VFR tolerance), so the clip counts as VFR, but
    # nearest-timestamp sampling still yields every frame exactly once.
    rng = np.random.default_rng(1)
    stamps = [Fraction(i, 25) + Fraction(300 + int(rng.integers(-300, 301)), 90000) for i in range(40)]
    path = make_clip(clip_dir / f"jitter-{backend}.mp4", frames=40, timestamps=stamps)
    info = probe(path)
    assert info.is_vfr and info.fps == 25
    assert [read_counter(f) for f in iter_frames(path, backend=backend)] == list(range(40))


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_resize_modes(rate_clips: dict[str, Path], fit: str) -> None:
    # Source 64x96 (HxW, 2:3) into 96x96: crop cuts the sides, pad adds bars top and bottom.
    frame = next(iter_frames(rate_clips["25"], size=(96, 96), fit=fit))
    assert frame.shape == (96, 96, 3)
    if fit == "pad":
        assert frame[:10].max() == 0 and frame[-10:].max() == 0  # 16-px bars
        assert read_counter(frame[16:80]) == 0
        assert is_upright(frame[16:80])
    elif fit == "stretch":
        assert read_counter(frame) == 0 and is_upright(frame)
    else:
        # The centre 64 columns of the source fill the width: no red marker (it was at the left edge).
        assert frame[:, :8, 0].mean() < 100


@needs_decord
@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_backends_resize_a_rotated_clip_alike(clip_dir: Path, fit: str) -> None:
    # PyAV scales in swscale while converting from YUV (before rotating); decord's frames are
    # rotated RGB scaled afterwards. Both must give the same upright picture.
    path = clip_dir / "upright-90.mp4"
    if not path.exists():
        make_clip(path, frames=6, rotation=90)
    size = (120, 100)
    decord_frames = list(iter_frames(path, size=size, fit=fit, backend="decord"))
    pyav_frames = list(iter_frames(path, size=size, fit=fit, backend="pyav"))
    for a, b in zip(decord_frames, pyav_frames, strict=True):
        assert a.shape == b.shape == (120, 100, 3)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3
    if fit == "stretch":
        assert [read_counter(f) for f in pyav_frames] == list(range(6))
        assert all(is_upright(f) for f in pyav_frames)


@needs_decord
@pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="this PyAV build has no AV1 encoder")
def test_pyav_fallback_for_a_file_decord_cannot_open(clip_dir: Path) -> None:
    path = make_clip(clip_dir / "av1.mp4", frames=5, size=(64, 96), codec="libsvtav1", options={})
    with pytest.raises(VideoError, match="decord cannot decode this file"):
        list(iter_frames(path, backend="decord"))
    assert [read_counter(f) for f in iter_frames(path)] == list(range(5))  # auto -> PyAV


def test_bad_arguments_fail_before_decoding(rate_clips: dict[str, Path]) -> None:
    path = rate_clips["25"]
    for kwargs, message in [
        ({"stride": 0}, "stride must be an int >= 1"),
        ({"max_frames": 0}, "max_frames must be None or an int >= 1"),
        ({"size": (0, 10)}, r"size must be \(height, width\)"),
        ({"size": (10.5, 10)}, r"size must be \(height, width\)"),
        ({"fit": "zoom"}, "fit must be one of"),
        ({"backend": "opencv"}, "backend must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            iter_frames(path, **kwargs)


def test_truncated_file_is_reported_with_the_frame(tmp_path: Path, rate_clips: dict[str, Path]) -> None:
    # A probe result promising more frames than the file has (e.g. a file cut short after probing).
    info = probe(rate_clips["25"])
    longer = type(info).from_dict({**info.to_dict(), "frame_count": 40, "source_frame_count": 40})
    with pytest.raises(VideoError, match="decoding stopped after 31 of 40 planned frames"):
        list(iter_frames(info.path, info=longer, backend="pyav"))


_MEMORY_SCRIPT = """
import json, resource, sys
from controlnext_video.video import iter_frames
path, backend = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = sum(1 for _ in iter_frames(path, backend=backend))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"count": count, "before_kib": before, "peak_kib": after}))
"""


@pytest.fixture(scope="session")
def memory_clips(clip_dir: Path) -> dict[int, Path]:
    """Same content at 300 and 3000 frames (128x160: 60 KiB a frame, 180 MiB for the long one)."""
    return {n: make_clip(clip_dir / f"long-{n}.mp4", frames=n, size=(128, 160)) for n in (300, 3000)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_peak_memory_does_not_grow_with_clip_length(memory_clips: dict[int, Path], backend: str) -> None:
    peaks = {}
    for n, path in memory_clips.items():
        run = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(path), backend],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["count"] == n
        peaks[n] = result["peak_kib"] - result["before_kib"]
    # Holding the long clip's frames would take 180 MiB; streaming keeps the growth the same.
    assert peaks[3000] - peaks[300] < 16 * 1024, peaks
