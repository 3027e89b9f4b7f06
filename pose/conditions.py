"""Conditions: the per-frame pictures the control module follows, as a registry.

- "pose": the driving poses aligned to the reference body and drawn as OpenPose skeletons
  (`pose.pipeline`, `pose.render`); they follow the reference's body.
- "edges": Canny edges of the driving frames (white on black).
- "mask": the person mask of the driving frames (MediaPipe selfie segmentation, white on black).

Edges and masks follow the clip's framing, not the reference's body: each driving frame is
fitted to the output size as the reference is (scaled to cover, centre-cropped) and the map is
taken there, so a driver standing left of centre leaves a mask left of centre whatever the
reference. The map of output frame 0 is the reference image's own (as the reference pose is for
"pose"). Each condition has an extractor (frame -> map, `ConditionType.extractor`), a renderer
(map -> RGB picture, `ConditionType.render`), a cache digest (`condition_digest`: clip content,
condition settings, size, stride, frame limit) and a preview (`write_condition_preview`).

Pure arrays in and out except `extract_clip` (streams the clip) and the preview (writes a video);
OpenCV and MediaPipe are imported where used.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from pose.errors import PoseInputError

ConditionName = Literal["pose", "edges", "mask"]
CONDITION_NAMES: tuple[str, ...] = get_args(ConditionName)
DEFAULT_CONDITIONS: tuple[str, ...] = ("pose",)
# Conditions taken from the driving frames as they are framed (not aligned to the reference body).
FRAME_CONDITIONS: tuple[str, ...] = ("edges", "mask")
# Value of a set pixel in a map and its rendering (white on black).
ON = 255


@dataclass(frozen=True)
class EdgeSettings:
    """Canny edge detection on the fitted frame.

    Attributes:
        low_threshold, high_threshold: Canny's hysteresis thresholds (on 8-bit gradients).
        blur: odd Gaussian blur kernel size applied first against noise (0: none).
    """

    low_threshold: int = 100
    high_threshold: int = 200
    blur: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold <= self.high_threshold:
            raise ValueError(f"need 0 <= low_threshold <= high_threshold, got {self.low_threshold}, {self.high_threshold}")
        if self.blur < 0 or (self.blur and self.blur % 2 == 0):
            raise ValueError(f"blur must be 0 or an odd kernel size, got {self.blur}")


@dataclass(frozen=True)
class MaskSettings:
    """Person segmentation with MediaPipe's selfie segmenter.

    Attributes:
        threshold: a pixel is the person when its probability is at least this.
        model_selection: MediaPipe's model: 0 general (256x256), 1 landscape (144x256, faster).
    """

    threshold: float = 0.5
    model_selection: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.model_selection not in (0, 1):
            raise ValueError(f"model_selection must be 0 or 1, got {self.model_selection}")


@dataclass(frozen=True)
class ConditionSettings:
    """Settings of the frame conditions (the pose has its own `PoseSettings`)."""

    edges: EdgeSettings = field(default_factory=EdgeSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)

    def of(self, name: str):
        return getattr(self, name)


def canny_edges(frame: np.ndarray, settings: EdgeSettings = EdgeSettings()) -> np.ndarray:
    """Canny edges of an RGB frame. Shapes: `(H, W, 3)` uint8 -> `(H, W)` uint8 in {0, 255}."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if settings.blur:
        grey = cv2.GaussianBlur(grey, (settings.blur, settings.blur), 0)
    return cv2.Canny(grey, settings.low_threshold, settings.high_threshold)


class PersonSegmenter:
    """MediaPipe selfie segmentation as a frame -> mask function; `close()` frees it.

    Shapes: `(H, W, 3)` uint8 RGB -> `(H, W)` uint8 in {0, 255}.
    """

    def __init__(self, settings: MaskSettings = MaskSettings()) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise PoseInputError("the mask condition needs MediaPipe: pip install mediapipe") from exc
        self.settings = settings
        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=settings.model_selection)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        probability = self._segmenter.process(np.ascontiguousarray(frame)).segmentation_mask
        return np.where(probability >= self.settings.threshold, ON, 0).astype(np.uint8)

    def close(self) -> None:
        self._segmenter.close()


def render_map(condition_map: np.ndarray) -> np.ndarray:
    """A map drawn as the control module sees it: white on black.

    Shapes: `(H, W)` uint8 -> `(H, W, 3)` uint8."""
    return np.repeat(condition_map[:, :, None], 3, axis=2)


class _Stateless:
    """A pure function as an extractor (nothing to close)."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self.function = function

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return self.function(frame)

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class ConditionType:
    """A frame condition: how its extractor is built and how a map is drawn."""

    name: str
    extractor: Callable[[ConditionSettings], Callable[[np.ndarray], np.ndarray]]
    render: Callable[[np.ndarray], np.ndarray] = render_map


FRAME_CONDITION_TYPES: dict[str, ConditionType] = {
    "edges": ConditionType("edges", lambda s: _Stateless(lambda frame: canny_edges(frame, s.edges))),
    "mask": ConditionType("mask", lambda s: PersonSegmenter(s.mask)),
}


def check_conditions(names: Sequence[str]) -> tuple[str, ...]:
    """A non-empty list of known conditions without repeats, in registry order."""
    names = tuple(names)
    unknown = [n for n in names if n not in CONDITION_NAMES]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}: choose among {CONDITION_NAMES}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"conditions must be a non-empty list without repeats, got {list(names)}")
    return tuple(n for n in CONDITION_NAMES if n in names)


def extract_frames(frames: Iterator[np.ndarray], name: str, settings: ConditionSettings = ConditionSettings()
                   ) -> np.ndarray:
    """The maps of a frame condition for frames already fitted to the output size.

    Shapes: frames `(H, W, 3)` uint8 each -> `(N, H, W)` uint8."""
    if name not in FRAME_CONDITION_TYPES:
        raise ValueError(f"{name!r} is not a frame condition ({FRAME_CONDITIONS})")
    extractor = FRAME_CONDITION_TYPES[name].extractor(settings)
    try:
        maps = [extractor(frame) for frame in frames]
    finally:
        extractor.close()
    if not maps:
        raise PoseInputError(f"no frames to extract {name} from")
    return np.stack(maps)


def extract_clip(driving: str | Path, name: str, *, height: int, width: int, stride: int, max_frames: int | None,
                 settings: ConditionSettings = ConditionSettings()) -> np.ndarray:
    """The maps of every stride-th driving frame, fitted to the output size as the reference is.

    Shapes: -> `(N, height, width)` uint8."""
    from controlnext_video.video import VideoError, iter_frames

    try:
        frames = iter_frames(driving, stride=stride, max_frames=max_frames, size=(height, width), fit="crop")
        return extract_frames(frames, name, settings)
    except VideoError as exc:
        raise PoseInputError(f"{driving}: {exc}") from exc


def condition_digest(clip_sha256: str, name: str, settings: ConditionSettings, *, height: int, width: int,
                     stride: int, max_frames: int | None) -> str:
    """The cache identity of a clip's maps: what decides them, hashed."""
    content = dict(clip=clip_sha256, condition=name, settings=asdict(settings.of(name)), height=height, width=width,
                   stride=stride, max_frames=max_frames)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def maps_to_bytes(maps: np.ndarray) -> bytes:
    """Maps as a compressed `.npz` (lossless; edges and masks compress well)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, maps=maps)
    return buffer.getvalue()


def maps_from_bytes(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["maps"]


def write_condition_preview(driving: str | Path, name: str, maps: np.ndarray, path: str | Path, *, stride: int,
                            max_frames: int | None, fps) -> Path:
    """Side-by-side preview: the fitted driving frame | its rendered map, one row per sampled frame.

    Shapes: maps `(N, H, W)` uint8 for the N sampled frames (N even sizes: H and W multiples of 2).
    """
    from controlnext_video.video import VideoWriter, iter_frames

    height, width = maps.shape[1:]
    writer = VideoWriter(path, fps, codec="h264", preset="veryfast")
    try:
        frames = iter_frames(driving, stride=stride, max_frames=max_frames, size=(height, width), fit="crop")
        for frame, condition_map in zip(frames, maps):
            writer.write(np.concatenate([frame, FRAME_CONDITION_TYPES[name].render(condition_map)], axis=1))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return Path(path)
