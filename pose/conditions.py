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
condition settings, size, stride, frame limit) and a preview (`ConditionPreview`). A clip's maps
are streamed (`iter_clip_maps`, a frame at a time) and stored in chunks (`storage.chunks`), never
held whole: a long clip needs no more memory than a short one.

Pure arrays in and out except `iter_clip_maps` (streams the clip) and the preview (writes a video);
OpenCV and MediaPipe are imported where used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """The maps of a frame condition for a few frames already fitted to the output size (the
    reference image, a test's frames; a clip goes through `iter_clip_maps`, which streams).

    Shapes: frames `(H, W, 3)` uint8 each -> `(N, H, W)` uint8."""
    maps = [condition_map for _, condition_map in _with_maps(frames, name, settings)]
    if not maps:
        raise PoseInputError(f"no frames to extract {name} from")
    return np.stack(maps)


def _with_maps(frames: Iterator[np.ndarray], name: str, settings: ConditionSettings
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if name not in FRAME_CONDITION_TYPES:
        raise ValueError(f"{name!r} is not a frame condition ({FRAME_CONDITIONS})")
    extractor = FRAME_CONDITION_TYPES[name].extractor(settings)
    try:
        for frame in frames:
            yield frame, extractor(frame)
    finally:
        extractor.close()


def iter_clip_maps(driving: str | Path, name: str, *, height: int, width: int, stride: int, max_frames: int | None,
                   settings: ConditionSettings = ConditionSettings(), maps: Iterable[np.ndarray] | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every stride-th driving frame fitted to the output size as the reference is, with its map:
    extracted as the frames stream by, or taken from `maps` (a cached clip's, in frame order).
    One frame in memory at a time.

    Shapes: yields `(height, width, 3)` uint8, `(height, width)` uint8."""
    from controlnext_video.video import VideoError, iter_frames

    try:
        frames = iter_frames(driving, stride=stride, max_frames=max_frames, size=(height, width), fit="crop")
        yield from (_with_maps(frames, name, settings) if maps is None else zip(frames, maps))
    except VideoError as exc:
        raise PoseInputError(f"{driving}: {exc}") from exc


def condition_digest(clip_sha256: str, name: str, settings: ConditionSettings, *, height: int, width: int,
                     stride: int, max_frames: int | None) -> str:
    """The cache identity of a clip's maps: what decides them, hashed."""
    content = dict(clip=clip_sha256, condition=name, settings=asdict(settings.of(name)), height=height, width=width,
                   stride=stride, max_frames=max_frames)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class ConditionPreview:
    """Side-by-side preview video, written a frame at a time: the fitted driving frame | its
    rendered map. A context manager: an exception discards the half-written file.

    Shapes: `write(frame (H, W, 3) uint8, map (H, W) uint8)`, H and W even."""

    def __init__(self, path: str | Path, name: str, fps) -> None:
        from controlnext_video.video import VideoWriter

        self.path, self.render = Path(path), FRAME_CONDITION_TYPES[name].render
        self.frames = 0
        self._writer = VideoWriter(path, fps, codec="h264", preset="veryfast")

    def write(self, frame: np.ndarray, condition_map: np.ndarray) -> None:
        self._writer.write(np.concatenate([frame, self.render(condition_map)], axis=1))
        self.frames += 1

    def __enter__(self) -> ConditionPreview:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._writer.close()
        else:
            self._writer.abort()


@dataclass(frozen=True)
class ConditionPreviewResult:
    out_dir: Path
    frames: int
    previews: dict[str, Path]  # <name>_preview.mp4: fitted driving frame | its map
    reference_maps: dict[str, Path]  # <name>_reference.png: the reference image's map (given with it, as its pose is)
    map_dirs: dict[str, Path] = field(default_factory=dict)  # <name>/NNNNNN.png: output frame N's map


def make_condition_preview(driving: str | Path, reference: str | Path, out_dir: str | Path, names: Sequence[str], *,
                           settings: ConditionSettings = ConditionSettings(), stride: int = 2,
                           max_frames: int | None = None, height: int = 1024, width: int = 576,
                           maps_png: bool = False, progress: bool = True) -> ConditionPreviewResult:
    """The `conditions` command: a clip's frame conditions exactly as `render` takes them (the
    same fitting, extractors and settings), written to `out_dir` to be checked before a render:
    per condition a side-by-side preview video, the reference's map, and with `maps_png` every
    map as a PNG. Streams the clip (one frame in memory at a time)."""
    from PIL import Image

    from controlnext_video.video import VideoError, output_rate, planned_frame_count, probe
    from pose.extract import prepare_reference

    names = [n for n in check_conditions(names) if n in FRAME_CONDITIONS]
    if not names:
        raise PoseInputError(f"no frame conditions to preview: choose among {FRAME_CONDITIONS} "
                             "(the pose has its own preview, the `poses` command)")
    if height % 2 or width % 2:
        raise PoseInputError(f"height and width must be even (H.264), got {height}x{width}")
    try:
        info = probe(driving)
    except VideoError as exc:
        raise PoseInputError(f"{driving}: {exc}") from exc
    fps, total = output_rate(info.fps, stride), planned_frame_count(info, stride, max_frames)
    fitted_reference = prepare_reference(reference, height=height, width=width)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previews, references, map_dirs, frames = {}, {}, {}, 0
    for name in names:
        references[name] = out_dir / f"{name}_reference.png"
        Image.fromarray(extract_frames(iter([fitted_reference]), name, settings)[0]).save(references[name])
        if maps_png:
            map_dirs[name] = out_dir / name
            map_dirs[name].mkdir(exist_ok=True)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total or None, desc=name, unit="frame")
        try:
            with ConditionPreview(out_dir / f"{name}_preview.mp4", name, fps) as preview:
                for frame, condition_map in iter_clip_maps(driving, name, height=height, width=width, stride=stride,
                                                           max_frames=max_frames, settings=settings):
                    if maps_png:
                        Image.fromarray(condition_map).save(map_dirs[name] / f"{preview.frames:06d}.png")
                    preview.write(frame, condition_map)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        previews[name], frames = preview.path, preview.frames
    return ConditionPreviewResult(out_dir, frames, previews, references, map_dirs)
