from fractions import Fraction

import numpy as np
import pytest

from pose.errors import PoseInputError
from pose.layout import NUM_KEYPOINTS
from pose.types import PoseFrame, PoseSequence


def _frame(value=0.5, **flags):
    kp = np.full((NUM_KEYPOINTS, 3), value, np.float32)
    return PoseFrame.from_keypoints(kp, **flags)


def test_frame_parts_and_flat_layout_agree():
    kp = np.arange(NUM_KEYPOINTS * 3, dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
    frame = PoseFrame.from_keypoints(kp)
    assert frame.body.shape == (18, 3) and frame.face.shape == (68, 3)
    assert frame.left_hand.shape == (21, 3) and frame.right_hand.shape == (21, 3)
    np.testing.assert_array_equal(frame.keypoints, kp)
    np.testing.assert_array_equal(frame.left_hand, kp[18:39])
    np.testing.assert_array_equal(frame.right_hand, kp[39:60])


def test_frame_arrays_are_read_only_copies():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    frame = PoseFrame.from_keypoints(kp)
    kp[0, 0] = 9
    assert frame.body[0, 0] == 0
    with pytest.raises(ValueError):
        frame.body[0, 0] = 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((17, 3)), r"body must have shape \(18, 3\)"),
        (np.full((18, 3), np.nan), "NaN"),
        (np.concatenate([np.zeros((18, 2)), -np.ones((18, 1))], 1), "negative scores"),
    ],
)
def test_frame_rejects_bad_arrays_with_a_clear_message(bad, message):
    z = np.zeros
    with pytest.raises(PoseInputError, match=message):
        PoseFrame(body=bad, left_hand=z((21, 3)), right_hand=z((21, 3)), face=z((68, 3)))


def test_missing_frame_has_no_scores_and_flags_are_exclusive():
    empty = PoseFrame.empty(detected_people=0)
    assert empty.missing and not empty.filled and empty.keypoints.sum() == 0
    with pytest.raises(PoseInputError, match="all scores 0"):
        _frame(0.5, missing=True)
    with pytest.raises(PoseInputError, match="both missing and filled"):
        PoseFrame.from_keypoints(np.zeros((NUM_KEYPOINTS, 3)), missing=True, filled=True)


def test_sequence_validates_size_fps_and_indices():
    frames = (_frame(), _frame())
    seq = PoseSequence(frames=frames, width=640, height=480, fps="30000/1001", frame_indices=(0, 2))
    assert seq.fps == Fraction(30000, 1001) and len(seq) == 2
    assert seq.stack().shape == (2, NUM_KEYPOINTS, 3)
    with pytest.raises(PoseInputError, match="width must be a positive integer"):
        PoseSequence(frames=frames, width=0, height=480, fps=30)
    with pytest.raises(PoseInputError, match="fps must be positive"):
        PoseSequence(frames=frames, width=640, height=480, fps=0)
    with pytest.raises(PoseInputError, match="strictly increasing"):
        PoseSequence(frames=frames, width=640, height=480, fps=30, frame_indices=(2, 2))
    with pytest.raises(PoseInputError, match="2 frames but 3 frame_indices"):
        PoseSequence(frames=frames, width=640, height=480, fps=30, frame_indices=(0, 1, 2))


def test_with_stack_zeroes_missing_frames_and_keeps_people_counts():
    seq = PoseSequence(frames=(_frame(detected_people=2), _frame()), width=64, height=48, fps=15)
    out = seq.with_stack(seq.stack() * 0.5, missing=[False, True])
    assert out[1].missing and out[1].keypoints.sum() == 0
    assert out[0].detected_people == 2
    np.testing.assert_allclose(out[0].keypoints, 0.25)
