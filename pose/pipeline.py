"""The one pose path: reference pose, driving detections, gap filling, smoothing, alignment.

The `poses` command (`pose.preview`) and the render flow both call these functions with one
`PoseSettings`, so the aligned poses a user previews are the ones rendered. Detection, the
expensive part, is its own step: the render flow caches its result by `detection_digest`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose.align import align_poses
from pose.extract import clip_frames, detect_frames, detect_reference, prepare_reference
from pose.settings import PoseSettings
from pose.smooth import fill_gaps, smooth_sequence
from pose.types import PoseFrame, PoseSequence


@dataclass(frozen=True)
class ReferencePose:
    image: np.ndarray  # the reference as the model sees it. Shapes: (height, width, 3) uint8
    pose: PoseFrame


@dataclass(frozen=True)
class DrivingPoses:
    detected: PoseSequence  # as detected, in driving-frame pixels
    smoothed: PoseSequence  # gaps filled and smoothed, in driving-frame pixels
    aligned: PoseSequence  # on the reference body, in output-frame pixels: what is rendered

    def frames_where(self, flags: np.ndarray) -> tuple[int, ...]:
        """Source frame indices whose flag is set."""
        return tuple(int(i) for i, f in zip(self.aligned.frame_indices, flags) if f)

    @property
    def missing_frames(self) -> tuple[int, ...]:
        """Source frames left without a pose (nobody found, or a gap too long to fill)."""
        return self.frames_where(self.aligned.missing)

    @property
    def filled_frames(self) -> tuple[int, ...]:
        return self.frames_where(self.aligned.filled)

    @property
    def multi_person_frames(self) -> tuple[int, ...]:
        return tuple(int(i) for i, f in zip(self.detected.frame_indices, self.detected.frames)
                     if f.detected_people > 1)


def reference_pose(reference: str | Path | np.ndarray, settings: PoseSettings, *, height: int,
                   width: int) -> ReferencePose:
    """The reference cropped to the output size, and its pose."""
    image = prepare_reference(reference, height=height, width=width)
    detector = settings.detector(video=False)
    try:
        pose = detect_reference(image, detector, source=str(reference) if isinstance(reference, (str, Path))
                                else "reference image")
    finally:
        detector.close()
    return ReferencePose(image, pose)


def detect_driving(driving: str | Path, settings: PoseSettings, *, stride: int, max_frames: int | None,
                   on_frame: Callable[[int, PoseFrame], None] | None = None) -> PoseSequence:
    """Poses of every stride-th frame of the clip (streamed), one person followed; source frame indices."""
    info, frames = clip_frames(driving, stride=stride, max_frames=max_frames)
    detector = settings.detector(video=True)
    try:
        return detect_frames(frames, detector, fps=info.fps / stride, source=str(driving), on_frame=on_frame)
    finally:
        detector.close()


def finish_poses(detected: PoseSequence, reference: PoseFrame, settings: PoseSettings, *, height: int,
                 width: int) -> DrivingPoses:
    """Fill short gaps, smooth, and align the detections to the reference body."""
    smoothed = fill_gaps(detected, settings.max_gap)
    if settings.smoothing is not None:
        smoothed = smooth_sequence(smoothed, settings.smoothing)
    aligned = align_poses(smoothed, reference, width=width, height=height, method=settings.align,
                          retarget_config=settings.retarget_config())
    return DrivingPoses(detected, smoothed, aligned)
