from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controlnext_video.video import VideoError, iter_frames, probe, write_side_by_side

from .clips import pattern, read_counter


def test_side_by_side_has_three_panels_at_one_height(tmp_path: Path, rate_clips: dict[str, Path]) -> None:
    reference = np.full((200, 100, 3), 200, np.uint8)  # tall 1:2 image
    poses = (np.zeros((64, 96, 3), np.uint8) for _ in range(8))
    results = (pattern(i) for i in range(8))
    seen: list[int] = []
    out = write_side_by_side(
        tmp_path / "review.mp4", reference, poses, results, 25,
        audio_source=rate_clips["25"], progress=lambda done, _: seen.append(done),
    )
    info = probe(out.path)
    # Panels: 32 + 96 + 96 wide at the results' height of 64.
    assert (info.height, info.width, info.frame_count) == (64, 224, 8)
    assert info.audio and info.audio[0].duration == pytest.approx(8 / 25, abs=0.001)
    assert seen == list(range(1, 9))
    frames = list(iter_frames(out.path))
    assert [read_counter(f[:, 128:]) for f in frames] == list(range(8))
    assert frames[0][:, :32].mean() == pytest.approx(200, abs=3)  # reference panel
    assert frames[0][:, 40:120].max() < 20  # black pose panel


def test_side_by_side_scales_to_a_requested_height(tmp_path: Path) -> None:
    out = write_side_by_side(
        tmp_path / "small.mp4", pattern(0), [pattern(0)] * 3, [pattern(1)] * 3, 24, height=32
    )
    assert (out.height, out.width) == (32, 144)


def test_side_by_side_rejects_sequences_of_different_length(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="results ended after 2 frames"):
        write_side_by_side(tmp_path / "bad.mp4", pattern(0), [pattern(0)] * 3, [pattern(0)] * 2, 25)
    assert not (tmp_path / "bad.mp4").exists()


def test_side_by_side_rounds_an_odd_height_down_to_even(tmp_path: Path) -> None:
    # 576x1024 (WxH) reference, 640x480 poses and results at a requested height of 33
    out = write_side_by_side(
        tmp_path / "odd.mp4", np.zeros((1024, 576, 3), np.uint8), [np.zeros((480, 640, 3), np.uint8)] * 2,
        [pattern(1, (480, 640))] * 2, 24, height=33,
    )
    assert (out.height, out.width) == (32, 18 + 42 + 42)
