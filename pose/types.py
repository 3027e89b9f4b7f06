"""Pose data types: one person's whole-body pose per frame, and a sequence of them.

Coordinates are normalized to the image the pose belongs to: x / width, y / height, so (0, 0)
is the top-left corner and (1, 1) the bottom-right. Every point carries a confidence score;
a score of 0 means "not detected" (OpenPose JSON writes such points as 0, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np

from pose.errors import PoseInputError
from pose.layout import (
    BODY_SLICE,
    FACE_SLICE,
    LEFT_HAND_SLICE,
    NUM_BODY,
    NUM_FACE,
    NUM_HAND,
    NUM_KEYPOINTS,
    RIGHT_HAND_SLICE,
)

_PARTS = (("body", NUM_BODY), ("left_hand", NUM_HAND), ("right_hand", NUM_HAND), ("face", NUM_FACE))


def _frozen_points(value, name: str, count: int) -> np.ndarray:
    arr = np.array(value, dtype=np.float32, copy=True)
    if arr.shape != (count, 3):
        raise PoseInputError(f"PoseFrame.{name} must have shape ({count}, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PoseInputError(f"PoseFrame.{name} contains NaN or infinite values")
    if np.any(arr[:, 2] < 0):
        raise PoseInputError(f"PoseFrame.{name} has negative scores")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class PoseFrame:
    """One person's pose in one frame.

    Shapes: body (18, 3) in OpenPose-18 order, left_hand and right_hand (21, 3), face (68, 3);
    each row is (x, y, score) with x, y normalized to the image. Arrays are float32 and read-only.

    missing: no pose for this frame (no person detected, or a gap too long to fill); all scores 0.
    filled: the pose was interpolated across a short detection gap, not detected.
    detected_people: how many people the detector found in the frame (the pose is one of them).
    """

    body: np.ndarray
    left_hand: np.ndarray
    right_hand: np.ndarray
    face: np.ndarray
    missing: bool = False
    filled: bool = False
    detected_people: int = 1

    def __post_init__(self) -> None:
        for name, count in _PARTS:
            object.__setattr__(self, name, _frozen_points(getattr(self, name), name, count))
        if self.missing and self.filled:
            raise PoseInputError("a PoseFrame cannot be both missing and filled")
        if self.missing and np.any(self.keypoints[:, 2] > 0):
            raise PoseInputError("a missing PoseFrame must have all scores 0")
        if int(self.detected_people) < 0:
            raise PoseInputError(f"detected_people must be >= 0, got {self.detected_people}")

    @classmethod
    def from_keypoints(cls, keypoints: np.ndarray, **flags) -> PoseFrame:
        """Build a frame from the flat (128, 3) layout: body, left hand, right hand, face."""
        arr = np.asarray(keypoints, dtype=np.float32)
        if arr.shape != (NUM_KEYPOINTS, 3):
            raise PoseInputError(f"keypoints must have shape ({NUM_KEYPOINTS}, 3), got {arr.shape}")
        return cls(
            body=arr[BODY_SLICE],
            left_hand=arr[LEFT_HAND_SLICE],
            right_hand=arr[RIGHT_HAND_SLICE],
            face=arr[FACE_SLICE],
            **flags,
        )

    @classmethod
    def empty(cls, detected_people: int = 0) -> PoseFrame:
        """A missing frame: no pose, all points zero."""
        return cls.from_keypoints(
            np.zeros((NUM_KEYPOINTS, 3), np.float32), missing=True, detected_people=detected_people
        )

    @property
    def keypoints(self) -> np.ndarray:
        """The flat (128, 3) array: body 0-17, left hand 18-38, right hand 39-59, face 60-127."""
        return np.concatenate([self.body, self.left_hand, self.right_hand, self.face])

    def with_keypoints(self, keypoints: np.ndarray) -> PoseFrame:
        """Same flags, new points."""
        return PoseFrame.from_keypoints(
            keypoints, missing=self.missing, filled=self.filled, detected_people=self.detected_people
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoseFrame):
            return NotImplemented
        return (
            (self.missing, self.filled, self.detected_people)
            == (other.missing, other.filled, other.detected_people)
            and np.array_equal(self.keypoints, other.keypoints)
        )

    __hash__ = None  # arrays inside: equality by value, not hashable


def _as_fps(value) -> Fraction:
    try:
        fps = Fraction(value).limit_denominator(1_000_000) if isinstance(value, float) else Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise PoseInputError(f"fps must be a positive number or fraction string, got {value!r}") from exc
    if fps <= 0:
        raise PoseInputError(f"fps must be positive, got {value!r}")
    return fps


@dataclass(frozen=True, eq=False)
class PoseSequence:
    """A pose per sampled frame of a clip, for one person.

    width, height: size in pixels of the frames the coordinates are normalized to (the driving
    clip for detected poses, the output frame for aligned poses).
    fps: rate of the pose frames (source rate / stride), an exact fraction.
    frame_indices: index in the source clip of each pose frame.
    """

    frames: tuple[PoseFrame, ...]
    width: int
    height: int
    fps: Fraction
    frame_indices: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        for i, f in enumerate(frames):
            if not isinstance(f, PoseFrame):
                raise PoseInputError(f"PoseSequence.frames[{i}] is {type(f).__name__}, not PoseFrame")
        object.__setattr__(self, "frames", frames)
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or int(v) <= 0:
                raise PoseInputError(f"PoseSequence.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        object.__setattr__(self, "fps", _as_fps(self.fps))
        indices = tuple(int(i) for i in self.frame_indices) if self.frame_indices else tuple(range(len(frames)))
        if len(indices) != len(frames):
            raise PoseInputError(
                f"PoseSequence has {len(frames)} frames but {len(indices)} frame_indices"
            )
        if any(b <= a for a, b in zip(indices, indices[1:])):
            raise PoseInputError("PoseSequence.frame_indices must be strictly increasing")
        object.__setattr__(self, "frame_indices", indices)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[PoseFrame]:
        return iter(self.frames)

    def __getitem__(self, index: int) -> PoseFrame:
        return self.frames[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoseSequence):
            return NotImplemented
        return (
            (self.width, self.height, self.fps, self.frame_indices)
            == (other.width, other.height, other.fps, other.frame_indices)
            and self.frames == other.frames
        )

    __hash__ = None

    def stack(self) -> np.ndarray:
        """All keypoints as one array. Shapes: (N, 128, 3)."""
        if not self.frames:
            return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
        return np.stack([f.keypoints for f in self.frames])

    @property
    def missing(self) -> np.ndarray:
        """Per-frame missing flags. Shapes: (N,) bool."""
        return np.array([f.missing for f in self.frames], dtype=bool)

    @property
    def filled(self) -> np.ndarray:
        """Per-frame filled flags. Shapes: (N,) bool."""
        return np.array([f.filled for f in self.frames], dtype=bool)

    def with_stack(
        self,
        keypoints: np.ndarray,
        *,
        missing: Sequence[bool] | None = None,
        filled: Sequence[bool] | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> PoseSequence:
        """A copy with new keypoints (N, 128, 3) and optionally new flags or frame size."""
        keypoints = np.asarray(keypoints, dtype=np.float32)
        if keypoints.shape != (len(self), NUM_KEYPOINTS, 3):
            raise PoseInputError(
                f"keypoints must have shape ({len(self)}, {NUM_KEYPOINTS}, 3), got {keypoints.shape}"
            )
        missing = self.missing if missing is None else np.asarray(missing, dtype=bool)
        filled = self.filled if filled is None else np.asarray(filled, dtype=bool)
        frames = tuple(
            PoseFrame.from_keypoints(
                np.zeros_like(k) if m else k,
                missing=bool(m),
                filled=bool(fl),
                detected_people=f.detected_people,
            )
            for k, m, fl, f in zip(keypoints, missing, filled, self.frames)
        )
        return replace(
            self,
            frames=frames,
            width=self.width if width is None else width,
            height=self.height if height is None else height,
        )
