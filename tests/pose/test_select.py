"""Two people: the most prominent one is taken first and then followed, whatever the order in
which the detector lists them."""

import numpy as np

from pose.select import PersonTracker, most_prominent, prominence
from pose.types import PoseFrame
from tests.pose.synthetic import full_frame

W, H = 1920, 1080


def test_the_larger_more_central_person_is_most_prominent():
    small_edge = full_frame((200, 300), W, H, scale=1.0)
    big_centre = full_frame((960, 250), W, H, scale=1.6)
    assert prominence(big_centre, W, H) > prominence(small_edge, W, H)
    assert most_prominent([small_edge, big_centre], W, H) == 1
    assert prominence(PoseFrame.empty(), W, H) == 0.0


def test_tracker_follows_the_same_person_through_order_swaps_and_size_changes():
    tracker = PersonTracker()
    picked = []
    for t in range(30):
        a = full_frame((600 + 10 * t, 250), W, H, scale=1.5)  # walks right, starts larger
        b = full_frame((1400 - 12 * t, 260), W, H, scale=1.2 + 0.03 * t)  # walks left, grows past a
        people = [a, b] if t % 2 else [b, a]
        sel = tracker.select(people, W, H)
        assert sel.detected_people == 2
        picked.append(np.allclose(sel.keypoints, a.keypoints))
    assert all(picked)  # a was chosen first (larger) and kept even once b became larger


def test_tracker_reacquires_after_a_frame_without_people():
    tracker = PersonTracker()
    a = full_frame((600, 250), W, H, scale=1.5)
    b = full_frame((1400, 260), W, H, scale=1.0)
    tracker.select([a, b], W, H)
    empty = tracker.select([], W, H)
    assert empty.missing and empty.detected_people == 0
    assert np.allclose(tracker.select([b, a], W, H).keypoints, a.keypoints)


def test_tracker_switches_when_the_followed_person_is_gone():
    tracker = PersonTracker()
    a = full_frame((600, 250), W, H, scale=1.5)
    far = full_frame((1600, 300), W, H, scale=1.0)
    tracker.select([a], W, H)
    assert np.allclose(tracker.select([far], W, H).keypoints, far.keypoints)
