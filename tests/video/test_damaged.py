"""Clips cut short: the container's rate is kept, the frame count is what decodes, and a
warning names the file; the probe, the planned count, the decoder and a render agree."""

from __future__ import annotations

import re
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from controlnext_video.video import (
    DamagedVideoWarning,
    VideoError,
    iter_frames,
    output_rate,
    planned_frame_count,
    probe,
    write_video,
)

from .clips import make_clip, pattern, read_counter

FRAMES = 48  # 2 s at 24 fps


def _frames():
    """Counter frames with texture, so that frames take similar room in the file."""
    noise = np.random.default_rng(0).integers(0, 60, (64, 96, 3), dtype=np.uint8)
    for i in range(FRAMES):
        frame = pattern(i) // 2 + np.roll(noise, 5 * i, axis=1)
        frame[24:40] = pattern(i)[24:40]  # the counter rows stay clean
        yield frame


def _cut_in_half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.fixture(scope="module")
def faststart_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 frames at 24 fps, H.264 with B-frames, index (moov) at the front."""
    path = tmp_path_factory.mktemp("damaged") / "whole.mp4"
    write_video(path, _frames(), 24)  # the writer uses movflags=+faststart
    with open(path, "rb") as f:
        head = f.read(64)
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head, "index not at the front"
    return path


@pytest.fixture(scope="module")
def mkv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("damaged") / "whole.mkv", frames=FRAMES, fps=24)


def test_an_intact_clip_is_not_damaged(faststart_mp4: Path) -> None:
    info = probe(faststart_mp4)
    assert not info.damaged and info.declared_frame_count == info.frame_count == FRAMES


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_clip_cut_in_half_keeps_its_rate_and_counts_what_decodes(
    tmp_path: Path, faststart_mp4: Path, mkv: Path, container: str
) -> None:
    source = faststart_mp4 if container == "mp4" else mkv
    half = _cut_in_half(source, tmp_path / f"half.{container}")
    with pytest.warns(DamagedVideoWarning) as caught:
        info = probe(half)
    message = str(caught[0].message)
    match = re.search(rf"half\.{container}: truncated or damaged \(.+\): (\d+) of the 48 declared frames decode", message)
    assert match, message
    assert info.damaged and info.declared_frame_count == FRAMES and not info.is_vfr
    assert info.fps == 24 and output_rate(info.fps, 2) == 12
    assert int(match.group(1)) == info.frame_count and 8 <= info.frame_count < FRAMES * 2 // 3

    with pytest.warns(DamagedVideoWarning):
        every = [read_counter(f) for f in iter_frames(half, info=info)]
        strided = [read_counter(f) for f in iter_frames(half, stride=2)]
    assert every == list(range(info.frame_count))  # what decodes, in order, no hole
    assert strided == list(range(0, info.frame_count, 2)) and len(strided) == planned_frame_count(info, 2)

    # A render of it: the planned number of frames at exactly 12 fps.
    rendered = write_video(tmp_path / "render.mp4", iter_frames(half, info=info, stride=2), output_rate(info.fps, 2))
    out = probe(rendered.path)
    assert (out.fps, out.frame_count) == (Fraction(12), planned_frame_count(info, 2))


def test_a_clip_with_no_decodable_frame_is_an_error(tmp_path: Path, faststart_mp4: Path) -> None:
    data = faststart_mp4.read_bytes()
    mdat = data.index(b"mdat") - 4  # the media data box: its size, then its type
    size = struct.unpack(">I", data[mdat : mdat + 4])[0]
    assert size > 300
    cut = tmp_path / "nothing.mp4"
    cut.write_bytes(data[: mdat + 8 + 100])  # the index and 100 bytes of the first frame
    with pytest.raises(VideoError, match=r"nothing\.mp4: truncated or damaged \(.+\): no frame decodes"):
        probe(cut)
    with av.open(str(cut)) as container:  # the container still opens and lists the frames
        assert container.streams.video[0].frames == FRAMES
