"""Detection over a clip and on the reference image, with clear outcomes for hard inputs.

- A frame with nobody in it becomes a missing frame (filled later when the gap is short).
- A clip with nobody in any sampled frame raises `NoPersonError` naming the clip.
- Several people: one is selected and followed (`pose.select.PersonTracker`); each frame
  records how many were detected.
- The reference image must show a person: otherwise `NoPersonError` naming the image.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pose.detect import PoseDetector
from pose.errors import NoPersonError, PoseInputError, PoseInputWarning
from pose.geometry import cover_crop_image
from pose.images import as_rgb, load_image
from pose.select import PersonTracker
from pose.types import PoseFrame, PoseSequence

#: A reference scaled up more than this to cover the output (either side under half the
#: output's) gets a `PoseInputWarning`: its details will be blurry.
MAX_REFERENCE_UPSCALE = 2.0


def detect_frames(
    frames: Iterable[tuple[int, np.ndarray]],
    detector: PoseDetector,
    *,
    fps: Fraction | float | str,
    tracker: PersonTracker | None = None,
    source: str = "clip",
    on_frame: Callable[[int, PoseFrame], None] | None = None,
) -> PoseSequence:
    """Detect and select one person per frame of a stream of (index, RGB image) pairs.

    Only the poses are kept (a few KB per frame); the images are dropped as they are consumed.
    fps: rate of the given frames (source rate / stride). on_frame: progress callback.
    """
    tracker = tracker or PersonTracker()
    poses, indices, size = [], [], None
    for index, image in frames:
        image = as_rgb(image, where=f"{source} frame {index}")
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise PoseInputError(
                f"{source} frame {index}: size {image.shape[:2]} differs from the first frame's {size}"
            )
        people = detector.detect(image)
        pose = tracker.select(people, size[1], size[0])
        poses.append(pose)
        indices.append(index)
        if on_frame is not None:
            on_frame(index, pose)
    if not poses:
        raise PoseInputError(f"{source}: no frames to detect poses on")
    if all(p.missing for p in poses):
        raise NoPersonError(f"{source}: no person detected in any of the {len(poses)} sampled frames")
    return PoseSequence(frames=tuple(poses), width=size[1], height=size[0], fps=fps, frame_indices=tuple(indices))


def detect_clip(
    path: str | Path,
    detector: PoseDetector,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    progress: bool = False,
) -> PoseSequence:
    """Poses of every stride-th frame of a video file (streaming; at most max_frames frames).

    Frame indices are source frame indices (0, stride, 2*stride, ...).
    """
    from controlnext_video.video import planned_frame_count

    info, frames = clip_frames(path, stride=stride, max_frames=max_frames)
    total = planned_frame_count(info, stride, max_frames)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total or None, desc="poses", unit="frame")
    try:
        return detect_frames(
            frames,
            detector,
            fps=info.fps / stride,
            source=str(path),
            on_frame=(lambda i, p: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def clip_frames(path: str | Path, *, stride: int = 1, max_frames: int | None = None):
    """The clip's probe and a stream of (source frame index, RGB frame) for every stride-th frame.

    Uses the project's video module (upright frames, exact rates, constant-rate resampling of
    variable-frame-rate clips); its errors become `PoseInputError`s naming the file.
    """
    from controlnext_video.video import VideoError, iter_frames, probe

    if int(stride) != stride or stride < 1:
        raise PoseInputError(f"stride must be a positive integer, got {stride!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise PoseInputError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    try:
        info = probe(path)
        frames = iter_frames(path, stride=stride, max_frames=max_frames, info=info)
    except VideoError as exc:
        raise PoseInputError(str(exc)) from exc

    def indexed():
        try:
            for i, frame in enumerate(frames):
                yield i * stride, frame
        except VideoError as exc:
            raise PoseInputError(str(exc)) from exc

    return info, indexed()


def prepare_reference(image: np.ndarray | str | Path, *, height: int, width: int) -> np.ndarray:
    """The reference image as the model sees it: resized to cover height x width, centre-cropped.

    A file is read with `pose.images.load_image` (transparency on a white background, 16-bit
    scaled, EXIF orientation applied; unreadable files raise `PoseInputError` naming them). A
    reference that must be scaled up more than `MAX_REFERENCE_UPSCALE` times gets a
    `PoseInputWarning` naming it.

    Shapes: returns (height, width, 3) uint8 RGB.
    """
    name = str(image) if isinstance(image, (str, Path)) else "reference image"
    array = load_image(image) if isinstance(image, (str, Path)) else as_rgb(image, where=name)
    upscale = max(height / array.shape[0], width / array.shape[1])
    if upscale > MAX_REFERENCE_UPSCALE:
        warnings.warn(
            f"{name}: {array.shape[1]}x{array.shape[0]} px is far below the {width}x{height} output "
            f"(scaled up {upscale:.1f}x, details will be blurry); use at least "
            f"{math.ceil(width / MAX_REFERENCE_UPSCALE)}x{math.ceil(height / MAX_REFERENCE_UPSCALE)} px",
            PoseInputWarning,
            stacklevel=2,
        )
    return cover_crop_image(array, height, width)


def detect_reference(image: np.ndarray, detector: PoseDetector, *, source: str = "reference image") -> PoseFrame:
    """The reference's pose (normalized to the given, already cropped, image).

    With several people the most prominent one is taken; nobody raises `NoPersonError`.
    """
    image = as_rgb(image, where=source)
    people = detector.detect(image)
    pose = PersonTracker().select(people, image.shape[1], image.shape[0])
    if pose.missing:
        raise NoPersonError(f"{source}: no person detected; the reference image must show the character's body")
    return pose
