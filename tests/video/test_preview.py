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


def test_contact_sheet_puts_results_beside_their_poses_in_a_grid() -> None:
    from controlnext_video.video import contact_sheet, decode_png, encode_jpeg, evenly_spaced

    poses = [np.zeros((64, 32, 3), np.uint8) for _ in range(5)]
    results = [np.full((64, 32, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    sheet = contact_sheet(poses, results, columns=3, panel_height=32, gap=2)
    # cells: pose 16 + result 16 wide, 32 tall; 3 columns, 2 rows, 2-pixel white gaps
    assert sheet.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3) and sheet.dtype == np.uint8
    assert sheet[:32, :16].max() == 0 and (sheet[:32, 16:32] == 10).all()  # pose | result 0
    assert sheet[34:, 34:50].max() == 0 and (sheet[34:, 50:66] == 50).all()  # row 2, column 2: pose | result 4
    assert (sheet[34:, 68:] == 255).all()  # no sixth cell: white
    assert (sheet[32:34] == 255).all()
    jpeg = encode_jpeg(sheet, quality=80)
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) < 10_000
    with pytest.raises(VideoError):
        decode_png(jpeg[:10])
    with pytest.raises(ValueError, match="as many poses as results"):
        contact_sheet(poses, results[:2])
    assert evenly_spaced(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert evenly_spaced(3, 8) == [0, 1, 2] and evenly_spaced(10, 1) == [0]
    with pytest.raises(ValueError):
        evenly_spaced(0, 8)
