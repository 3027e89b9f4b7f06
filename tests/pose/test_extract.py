"""Clips and images with hard content: frames without a person, a clip without anybody, two
people, corrupt files. Each has a clear outcome."""

import numpy as np
import pytest

from pose.extract import clip_frames
from pose.detect.mediapipe import MediaPipeDetector
from pose.errors import NoPersonError, PoseInputError
from pose.extract import detect_clip, detect_frames, detect_reference, prepare_reference
from pose.images import load_image
from pose.smooth import fill_gaps


def test_frames_without_a_person_are_missing_then_filled(walking_clip):
    with MediaPipeDetector(static_image_mode=False) as detector:
        seq = detect_clip(walking_clip, detector)
    assert len(seq) == 12 and (seq.width, seq.height) == (384, 384) and seq.fps == 30
    assert [i for i, f in enumerate(seq) if f.missing] == [5, 6]
    assert all(f.detected_people == (0 if f.missing else 1) for f in seq)
    filled = fill_gaps(seq, max_gap=2)
    assert [i for i, f in enumerate(filled) if f.filled] == [5, 6] and not filled.missing.any()
    assert fill_gaps(seq, max_gap=1).missing.sum() == 2  # too long a gap: stays missing


def test_stride_and_frame_limit(walking_clip):
    with MediaPipeDetector(static_image_mode=False) as detector:
        seq = detect_clip(walking_clip, detector, stride=3, max_frames=3)
    assert seq.frame_indices == (0, 3, 6) and seq.fps == 10


def test_a_clip_with_nobody_raises_naming_the_clip(empty_clip):
    with MediaPipeDetector(static_image_mode=False) as detector:
        with pytest.raises(NoPersonError, match=r"empty\.mp4: no person detected in any of the 6 sampled frames"):
            detect_clip(empty_clip, detector)


def test_reference_without_a_person_raises_naming_the_image(mp_image_detector):
    with pytest.raises(NoPersonError, match="wall.png: no person detected"):
        detect_reference(np.full((512, 512, 3), 90, np.uint8), mp_image_detector, source="wall.png")


def test_corrupt_and_missing_files_fail_clearly(tmp_path, astronaut, walking_clip):
    from PIL import Image

    good = tmp_path / "ref.png"
    Image.fromarray(astronaut).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:2000])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00not an image at all")
    with pytest.raises(PoseInputError, match="cannot read image .*truncated.png"):
        load_image(truncated)
    with pytest.raises(PoseInputError, match="cannot read image .*junk.jpg"):
        prepare_reference(junk, height=1024, width=576)
    with pytest.raises(PoseInputError, match="image not found"):
        load_image(tmp_path / "nope.png")
    assert prepare_reference(good, height=1024, width=576).shape == (1024, 576, 3)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(walking_clip.read_bytes()[:3000])
    with pytest.raises(PoseInputError, match="broken.mp4"):
        list(clip_frames(broken)[1])
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    with pytest.raises(PoseInputError, match="notes.mp4"):
        clip_frames(text)
    with pytest.raises(PoseInputError, match="stride must be a positive integer"):
        clip_frames(walking_clip, stride=0)
    info, frames = clip_frames(walking_clip, stride=3, max_frames=3)
    assert [i for i, _ in frames] == [0, 3, 6] and info.frame_count == 12


def test_detect_frames_checks_sizes_and_types(mp_image_detector):
    frames = [(0, np.zeros((32, 32, 3), np.uint8)), (1, np.zeros((16, 32, 3), np.uint8))]
    with pytest.raises(PoseInputError, match=r"frame 1: size \(16, 32\) differs"):
        detect_frames(iter(frames), mp_image_detector, fps=10)
    with pytest.raises(PoseInputError, match="clip frame 0: expected dtype uint8"):
        detect_frames(iter([(0, np.zeros((32, 32, 3)))]), mp_image_detector, fps=10)
    with pytest.raises(PoseInputError, match="no frames"):
        detect_frames(iter([]), mp_image_detector, fps=10)
