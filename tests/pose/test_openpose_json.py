import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pose import openpose_json as oj
from pose.errors import PoseInputError
from pose.layout import NUM_KEYPOINTS
from pose.types import PoseFrame, PoseSequence

coords = arrays(np.float32, (NUM_KEYPOINTS, 2), elements=st.floats(-2, 3, width=32, allow_nan=False))
scores = arrays(np.float32, (NUM_KEYPOINTS, 1), elements=st.floats(0, 1.5, width=32))
sizes = st.tuples(st.integers(1, 8192), st.integers(1, 8192))


@settings(max_examples=60, deadline=None)
@given(coords, scores, sizes, st.booleans(), st.integers(1, 5))
def test_frame_round_trips_bit_exactly(xy, sc, size, filled, people):
    frame = PoseFrame.from_keypoints(np.concatenate([xy, sc], 1), filled=filled, detected_people=people)
    data = json.loads(json.dumps(oj.frame_to_dict(frame, *size)))
    back = oj.frame_from_dict(data)
    assert back == frame  # values, flags and people count, bit for bit


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(coords, scores, st.booleans()), min_size=1, max_size=6), sizes)
def test_sequence_file_round_trips(tmp_path_factory, items, size):
    frames = tuple(
        PoseFrame.empty(detected_people=0) if missing else PoseFrame.from_keypoints(np.concatenate([xy, sc], 1))
        for xy, sc, missing in items
    )
    seq = PoseSequence(frames=frames, width=size[0], height=size[1], fps=Fraction(30000, 1001),
                       frame_indices=tuple(range(0, 2 * len(frames), 2)))
    path = oj.write_sequence(seq, tmp_path_factory.mktemp("seq") / "poses.json")
    assert oj.read_sequence(path) == seq


def test_openpose_layout_pixels_and_face_pupils():
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[0] = (0.5, 0.25, 0.9)  # nose
    kp[60] = (0.1, 0.2, 0.8)  # first face point
    d = oj.frame_to_dict(PoseFrame.from_keypoints(kp), 640, 480)
    person = d["people"][0]
    assert d["version"] == 1.3 and (d["canvas_width"], d["canvas_height"]) == (640, 480)
    assert person["pose_keypoints_2d"][:3] == [320.0, 120.0, pytest.approx(0.9)]
    assert len(person["pose_keypoints_2d"]) == 54
    assert len(person["face_keypoints_2d"]) == 210 and person["face_keypoints_2d"][-6:] == [0.0] * 6
    assert len(person["hand_left_keypoints_2d"]) == 63 == len(person["hand_right_keypoints_2d"])


def test_reads_files_from_other_tools(tmp_path):
    # OpenPose itself: no canvas size, several people, 70 face points, empty hands.
    people = [
        {"pose_keypoints_2d": [10.0, 20.0, 0.9] * 18, "face_keypoints_2d": [5.0, 5.0, 0.5] * 70},
        {"pose_keypoints_2d": [100.0, 200.0, 0.9] * 18, "hand_left_keypoints_2d": []},
    ]
    frame_file = tmp_path / "clip_000000000007_keypoints.json"
    frame_file.write_text(json.dumps({"version": 1.3, "people": people}))
    with pytest.raises(PoseInputError, match="pass width= and height="):
        oj.read_frames(tmp_path, fps=25)
    seq = oj.read_frames(tmp_path, fps=25, width=200, height=400)
    assert seq.frame_indices == (7,) and seq[0].detected_people == 2
    with pytest.raises(PoseInputError, match="2 people in the frame"):
        oj.read_frame(frame_file, width=200, height=400)
    found, _ = oj.people_from_dict(json.loads(frame_file.read_text()), 200, 400)
    np.testing.assert_allclose(found[0].face[0], [0.025, 0.0125, 0.5])
    assert found[1].left_hand.sum() == 0


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"people": [{"pose_keypoints_2d": [0.0] * 75}]}), "BODY_25"),
        (json.dumps({"people": [{"pose_keypoints_2d": [0.0] * 10}]}), "expected 54 values, got 10"),
        (json.dumps({"format": "other"}), "not a pose sequence file"),
    ],
)
def test_malformed_files_fail_naming_the_file_and_field(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_text(payload)
    reader = oj.read_sequence if "format" in payload else (lambda p: oj.read_frame(p, 100, 100))
    with pytest.raises(PoseInputError, match=message) as err:
        reader(path)
    assert "bad.json" in str(err.value)


def test_per_frame_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = (
        PoseFrame.from_keypoints(rng.random((NUM_KEYPOINTS, 3)).astype(np.float32)),
        PoseFrame.empty(),
        PoseFrame.from_keypoints(rng.random((NUM_KEYPOINTS, 3)).astype(np.float32), filled=True),
    )
    seq = PoseSequence(frames=frames, width=576, height=1024, fps=15, frame_indices=(0, 2, 4))
    paths = oj.write_frames(seq, tmp_path)
    assert [p.name for p in paths] == [f"frame_{i:012d}_keypoints.json" for i in (0, 2, 4)]
    assert oj.read_frames(tmp_path, fps=15) == seq
