"""Choosing one person when a detector finds several.

Policy (the default for clips): in the first frame with people, take the most prominent person:
the largest body box, discounted by distance from the image centre. In later frames, follow that
person: take the candidate whose body joints lie closest to the previously selected pose; only
when nobody is close (the person left, or was occluded and someone else is in view) fall back to
the most prominent person again. Every selected frame records how many people were detected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from pose.errors import PoseInputError
from pose.layout import PRESENT_SCORE
from pose.types import PoseFrame

MIN_SHARED_JOINTS = 3


def body_box(frame: PoseFrame, width: int, height: int) -> tuple[float, float, float, float] | None:
    """Pixel box (x0, y0, x1, y1) of the present body joints (all present points if < 2 joints)."""
    pts = frame.body[frame.body[:, 2] > PRESENT_SCORE]
    if len(pts) < 2:
        kp = frame.keypoints
        pts = kp[kp[:, 2] > PRESENT_SCORE]
    if len(pts) == 0:
        return None
    xs, ys = pts[:, 0] * width, pts[:, 1] * height
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def prominence(frame: PoseFrame, width: int, height: int) -> float:
    """Box area as a fraction of the image, times (1 - 0.5 * distance of its centre from the
    image centre, as a fraction of the half diagonal). 0 for a pose with no present point."""
    box = body_box(frame, width, height)
    if box is None:
        return 0.0
    x0, y0, x1, y1 = box
    area = max(x1 - x0, 1.0) * max(y1 - y0, 1.0) / (width * height)
    cx, cy = (x0 + x1) / 2 - width / 2, (y0 + y1) / 2 - height / 2
    off_centre = min(np.hypot(cx, cy) / np.hypot(width / 2, height / 2), 1.0)
    return float(area * (1.0 - 0.5 * off_centre))


def most_prominent(people: Sequence[PoseFrame], width: int, height: int) -> int:
    """Index of the most prominent person (the first one on ties)."""
    if not people:
        raise PoseInputError("most_prominent needs at least one person")
    return int(np.argmax([prominence(p, width, height) for p in people]))


def pose_distance(a: PoseFrame, b: PoseFrame, width: int, height: int) -> float:
    """Mean pixel distance between joints present in both, over the diagonal of a's box.

    Falls back to the distance between box centres when fewer than 3 joints are shared;
    infinite when either pose has no present point.
    """
    box = body_box(a, width, height)
    other = body_box(b, width, height)
    if box is None or other is None:
        return float("inf")
    scale = max(np.hypot(box[2] - box[0], box[3] - box[1]), 1.0)
    shared = (a.body[:, 2] > PRESENT_SCORE) & (b.body[:, 2] > PRESENT_SCORE)
    size = np.array([width, height], np.float64)
    if shared.sum() >= MIN_SHARED_JOINTS:
        d = np.linalg.norm((a.body[shared, :2] - b.body[shared, :2]) * size, axis=1)
        return float(d.mean() / scale)
    ca = np.array([box[0] + box[2], box[1] + box[3]]) / 2
    cb = np.array([other[0] + other[2], other[1] + other[3]]) / 2
    return float(np.linalg.norm(ca - cb) / scale)


class PersonTracker:
    """Follows one person through a clip (see the module docstring for the policy).

    max_jump: largest `pose_distance` (in units of the tracked body's box diagonal) at which a
    candidate still counts as the same person from one sampled frame to the next.
    """

    def __init__(self, max_jump: float = 0.5) -> None:
        if not max_jump > 0:
            raise PoseInputError(f"max_jump must be positive, got {max_jump}")
        self.max_jump = max_jump
        self._last: PoseFrame | None = None

    def reset(self) -> None:
        self._last = None

    def select(self, people: Sequence[PoseFrame], width: int, height: int) -> PoseFrame:
        """The tracked person among `people` (a missing frame when there is nobody)."""
        count = len(people)
        candidates = [p for p in people if not p.missing and body_box(p, width, height) is not None]
        if not candidates:
            return PoseFrame.empty(detected_people=count)
        choice = None
        if self._last is not None:
            dists = [pose_distance(self._last, p, width, height) for p in candidates]
            best = int(np.argmin(dists))
            if dists[best] <= self.max_jump:
                choice = candidates[best]
        if choice is None:
            choice = candidates[most_prominent(candidates, width, height)]
        self._last = choice
        return replace(choice, detected_people=count, missing=False, filled=False)
