"""The small private PyAV helper: stride, limits, rotation metadata, odd sizes."""

from fractions import Fraction

import av
import numpy as np
import pytest

from pose._video import Mp4Writer, iter_frames, probe_clip
from pose.errors import PoseInputError


def test_rotation_metadata_is_applied(tmp_path):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as phones store portrait video
        img = np.zeros((32, 64, 3), np.uint8)
        img[:, :8] = 255  # a white band on the left
        for _ in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe_clip(path)
    assert (info.width, info.height, info.rotation, info.frame_count) == (32, 64, 90, 3)
    _, frame = next(iter_frames(path))
    assert frame.shape == (64, 32, 3)
    assert frame[-6:].mean() > 240 and frame[:-10].mean() < 10  # left band -> bottom after CCW turn


def test_stride_limit_and_exact_rate(tmp_path):
    path = tmp_path / "ntsc.mp4"
    with Mp4Writer(path, fps=Fraction(30000, 1001), width=33, height=17) as writer:  # odd size: padded
        for k in range(10):
            writer.write(np.full((17, 33, 3), 20 * k, np.uint8))
    info = probe_clip(path)
    assert info.fps == Fraction(30000, 1001) and (info.width, info.height) == (34, 18)
    got = list(iter_frames(path, stride=3, max_frames=3))
    assert [i for i, _ in got] == [0, 3, 6]
    assert all(abs(np.median(f) - 20 * i) <= 3 for i, f in got)  # the right frames, lossy-coded
    with pytest.raises(PoseInputError, match="max_frames must be a positive integer"):
        list(iter_frames(path, max_frames=0))
    with pytest.raises(PoseInputError, match=r"frame must be \(17, 33, 3\) uint8"):
        with Mp4Writer(tmp_path / "x.mp4", fps=10, width=33, height=17) as writer:
            writer.write(np.zeros((16, 33, 3), np.uint8))


def test_missing_video_and_video_without_video_stream(tmp_path):
    with pytest.raises(PoseInputError, match="video not found"):
        probe_clip(tmp_path / "nope.mp4")
    audio_only = tmp_path / "audio.m4a"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(PoseInputError, match="has no video stream"):
        probe_clip(audio_only)
