"""Training examples from clips, sampled as the official ControlNeXt-SVD v2 training data.

For one example of a clip of `L` frames:
- `sample_n_frames` frames at `interval` (lowered to `L // sample_n_frames` for short clips)
  from a random start;
- a random frame of the same clip is the reference: it replaces frame 0, with its own pose as
  frame 0's control, and is the image the CLIP embedding and reference latents are made from;
- a random crop to the training aspect ratio (full extent along the other axis), the same for
  frames, poses and weights, then an antialiased bilinear resize to the training size;
- per-pixel loss weights: 1, and 1 + 4 * 0.8 = 4.2 inside the boxes of hands whose mean
  keypoint score is above 0.5 (boxes grown by a 10-pixel margin at the source resolution and
  resized with the frames, so their edges are soft); the boxes of low-score hands are drawn
  with 0, in order, and can erase an overlapping box; frame 0 (the reference) weighs 1.

Clips are any `ClipSource`: frames and rendered pose images at the source resolution, and the
hand boxes of each frame (`ArrayClip` in memory, `VideoClip` streamed from a video file).
Sampling and preparation are pure functions of their inputs and the given random generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

# Official sampling defaults (the reference doc's): frames per example and frame interval.
DEFAULT_SAMPLE_FRAMES = 14
DEFAULT_FRAME_INTERVAL = 3
# Hands weight map of the official data loader.
HAND_SCORE_THRESHOLD = 0.5  # a hand counts when its mean keypoint score is above this
HAND_MASK_VALUE = 0.8  # mask value inside a counted hand's box
HAND_WEIGHT_GAIN = 4.0  # weight = 1 + HAND_WEIGHT_GAIN * mask
HAND_BOX_MARGIN = 10  # pixels added on every side of a box, at the source resolution


@dataclass(frozen=True)
class HandBox:
    """One hand's box, normalized to its frame (x / width, y / height), and its mean keypoint score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @classmethod
    def from_keypoints(cls, points: np.ndarray) -> "HandBox | None":
        """The box around a hand's detected keypoints (score > 0) and the mean score of all of them.

        Shapes: points `(K, 3)` rows of normalized (x, y, score). None when no point is detected.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"hand keypoints must be (K, 3), got shape {points.shape}")
        found = points[points[:, 2] > 0]
        if len(found) == 0:
            return None
        return cls(
            x0=float(found[:, 0].min()), y0=float(found[:, 1].min()),
            x1=float(found[:, 0].max()), y1=float(found[:, 1].max()),
            score=float(points[:, 2].mean()),
        )


@runtime_checkable
class ClipSource(Protocol):
    """A training clip: frames, their rendered poses and hand boxes, by frame index."""

    @property
    def num_frames(self) -> int: ...

    @property
    def size(self) -> tuple[int, int]:
        """Source `(height, width)` of the frames and poses."""

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames `(n, H, W, 3)` uint8 at the source resolution."""

    def poses(self, indices: Sequence[int]) -> np.ndarray:
        """Rendered pose images `(n, H, W, 3)` uint8, the same size as the frames (or, for a
        multi-condition module, its condition pictures stacked: `(n, H, W, 3K)`)."""

    def hand_boxes(self, index: int) -> Sequence[HandBox]:
        """The hand boxes of one frame (empty when no hands were found)."""


@dataclass(frozen=True)
class ArrayClip:
    """A `ClipSource` held in memory (tests, the demo, short clips).

    Shapes: frames `(L, H, W, 3)` and poses `(L, H, W, 3K)` uint8 (K condition pictures stacked,
    1 for poses alone); hands: L sequences of `HandBox` (or None: no hands).
    """

    frame_array: np.ndarray
    pose_array: np.ndarray
    hands: Sequence[Sequence[HandBox]] | None = None

    def __post_init__(self) -> None:
        for name, array in (("frame_array", self.frame_array), ("pose_array", self.pose_array)):
            if array.ndim != 4 or array.shape[-1] % 3 or array.dtype != np.uint8:
                raise ValueError(f"{name} must be uint8 (L, H, W, 3), got {array.dtype} {array.shape}")
        if self.frame_array.shape[-1] != 3 or self.frame_array.shape[:3] != self.pose_array.shape[:3]:
            raise ValueError(f"frames {self.frame_array.shape} and poses {self.pose_array.shape} differ in shape")
        if self.hands is not None and len(self.hands) != len(self.frame_array):
            raise ValueError(f"hands has {len(self.hands)} entries for {len(self.frame_array)} frames")

    @property
    def num_frames(self) -> int:
        return len(self.frame_array)

    @property
    def size(self) -> tuple[int, int]:
        return self.frame_array.shape[1], self.frame_array.shape[2]

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        return self.frame_array[list(indices)]

    def poses(self, indices: Sequence[int]) -> np.ndarray:
        return self.pose_array[list(indices)]

    def hand_boxes(self, index: int) -> Sequence[HandBox]:
        return () if self.hands is None else self.hands[index]


class VideoClip:
    """A `ClipSource` over a video file (or PNG-sequence folder): frames are streamed from the
    file at each read, decoding only up to the last frame asked for; pose images come from
    `render_pose(index)` (the render path's pose renderer at the source size) and hand boxes
    from `hands` (one sequence per frame).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        render_pose: Callable[[int], np.ndarray],
        hands: Sequence[Sequence[HandBox]],
        info=None,
    ) -> None:
        from ..video import planned_frame_count, probe

        self.path = Path(path)
        self.info = probe(self.path) if info is None else info
        self._count = planned_frame_count(self.info)
        if len(hands) != self._count:
            raise ValueError(f"{self.path}: hands has {len(hands)} entries for {self._count} frames")
        self._render_pose = render_pose
        self._hands = hands

    @property
    def num_frames(self) -> int:
        return self._count

    @property
    def size(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        from ..video import iter_frames

        wanted = set(indices)
        if not wanted or min(wanted) < 0 or max(wanted) >= self._count:
            raise IndexError(f"{self.path}: frame indices {sorted(wanted)} outside 0..{self._count - 1}")
        found = {}
        for index, frame in enumerate(iter_frames(self.path, max_frames=max(wanted) + 1, info=self.info)):
            if index in wanted:
                found[index] = frame
        return np.stack([found[i] for i in indices])

    def poses(self, indices: Sequence[int]) -> np.ndarray:
        images = np.stack([self._render_pose(i) for i in indices])
        if images.shape[1:3] != self.size or images.shape[3] % 3 or images.dtype != np.uint8:
            raise ValueError(
                f"render_pose must return uint8 {(*self.size, 3)} images (or 3K channels: stacked conditions), "
                f"got {images.dtype} {images.shape[1:]}"
            )
        return images

    def hand_boxes(self, index: int) -> Sequence[HandBox]:
        return self._hands[index]


@dataclass(frozen=True)
class FrameSample:
    """Which frames of a clip make one example.

    Attributes:
        frame_indices: the sampled frames, `interval` apart; the first is replaced by the reference.
        reference_index: the reference frame.
        interval: the interval used (the requested one, lowered for short clips).
    """

    frame_indices: tuple[int, ...]
    reference_index: int
    interval: int

    @property
    def read_indices(self) -> tuple[int, ...]:
        """The frames an example is made of: the reference, then the sampled frames after the first."""
        return (self.reference_index, *self.frame_indices[1:])


def sample_frames(
    clip_length: int,
    rng: np.random.Generator,
    sample_n_frames: int = DEFAULT_SAMPLE_FRAMES,
    interval: int = DEFAULT_FRAME_INTERVAL,
) -> FrameSample:
    """Draw an example's frames from a clip of `clip_length` frames (official sampling).

    The interval is lowered to `clip_length // sample_n_frames` when the clip is too short for it;
    the start is uniform over the positions where `sample_n_frames * interval` frames fit; the
    reference is uniform over the whole clip.
    """
    if sample_n_frames < 1 or interval < 1:
        raise ValueError(f"sample_n_frames and interval must be >= 1, got {sample_n_frames} and {interval}")
    used = min(interval, clip_length // sample_n_frames)
    if used < 1:
        raise ValueError(f"a clip of {clip_length} frames is too short for {sample_n_frames} frames per example")
    span = used * sample_n_frames
    start = int(rng.integers(0, clip_length - span + 1))
    reference = int(rng.integers(0, clip_length))
    return FrameSample(tuple(range(start, start + span, used)), reference, used)


@dataclass(frozen=True)
class CropBox:
    """A window of a frame: rows `top:top+height`, columns `left:left+width` (source pixels)."""

    top: int
    left: int
    height: int
    width: int


def random_crop_box(
    source_height: int, source_width: int, height: int, width: int, rng: np.random.Generator
) -> CropBox:
    """The official random crop to the aspect ratio `height / width`: the full extent along one
    axis, a random offset along the other."""
    if min(source_height, source_width, height, width) < 1:
        raise ValueError("sizes must be positive")
    if source_height / source_width > height / width:
        crop_height = int(source_width * height / width)
        return CropBox(int(rng.integers(0, source_height - crop_height + 1)), 0, crop_height, source_width)
    crop_width = int(source_height * width / height)
    return CropBox(0, int(rng.integers(0, source_width - crop_width + 1)), source_height, crop_width)


def hand_mask(boxes: Sequence[HandBox], height: int, width: int, margin: int = HAND_BOX_MARGIN) -> np.ndarray:
    """The official hand mask of one frame: 0, `HAND_MASK_VALUE` inside the (margin-grown) boxes
    of hands scoring above `HAND_SCORE_THRESHOLD`, boxes of lower-score hands drawn with 0, in order.

    Shapes: -> `(height, width)` float32.
    """
    mask = np.zeros((height, width), dtype=np.float32)
    for box in boxes:
        value = HAND_MASK_VALUE if box.score > HAND_SCORE_THRESHOLD else 0.0
        x0, x1 = max(int(box.x0 * width) - margin, 0), min(int(box.x1 * width) + margin, width)
        y0, y1 = max(int(box.y0 * height) - margin, 0), min(int(box.y1 * height) + margin, height)
        mask[y0:y1, x0:x1] = value
    return mask


@dataclass(frozen=True)
class TrainingExample:
    """One example at the training size.

    Shapes: pixels `(F, 3, H, W)` float32 in [-1, 1] (frame 0 is the reference frame), reference
    `(3, H, W)` in [-1, 1], poses `(F, 3, H, W)` in [0, 1], weights `(F, 1, H, W)` >= 1.
    """

    pixels: torch.Tensor
    reference: torch.Tensor
    poses: torch.Tensor
    weights: torch.Tensor


def _crop_resize(images: torch.Tensor, crop: CropBox, height: int, width: int) -> torch.Tensor:
    """Crop `(n, C, H, W)` float images and resize them (bilinear, antialiased)."""
    window = images[..., crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    return F.interpolate(window, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def _as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def load_example(clip: ClipSource, sample: FrameSample, crop: CropBox, height: int, width: int) -> TrainingExample:
    """Read, crop and resize the frames, poses and hand weights of one example."""
    indices = sample.read_indices
    frames = clip.frames(indices)
    poses = clip.poses(indices)
    source_height, source_width = clip.size
    expected = (len(indices), source_height, source_width, 3)
    if frames.shape != expected or poses.shape[:3] != expected[:3] or poses.ndim != 4 or poses.shape[3] % 3:
        raise ValueError(f"clip returned frames {frames.shape} and poses {poses.shape}, expected {expected}")
    masks = np.zeros((len(indices), 1, source_height, source_width), dtype=np.float32)
    for row, index in enumerate(indices[1:], start=1):
        masks[row, 0] = hand_mask(clip.hand_boxes(index), source_height, source_width)
    pixels = _crop_resize(_as_float(frames), crop, height, width) * 2 - 1
    weights = 1 + HAND_WEIGHT_GAIN * _crop_resize(torch.from_numpy(masks), crop, height, width)
    weights[0] = 1
    return TrainingExample(
        pixels=pixels,
        reference=pixels[0].clone(),
        poses=_crop_resize(_as_float(poses), crop, height, width),
        weights=weights,
    )


def draw_example(
    clip: ClipSource,
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    sample_n_frames: int = DEFAULT_SAMPLE_FRAMES,
    interval: int = DEFAULT_FRAME_INTERVAL,
) -> TrainingExample:
    """A random example of `clip` at `height` x `width` (frames, reference, then crop from `rng`)."""
    sample = sample_frames(clip.num_frames, rng, sample_n_frames, interval)
    crop = random_crop_box(*clip.size, height, width, rng)
    return load_example(clip, sample, crop, height, width)
