"""The `poses` command's logic: detect, smooth, align, write the pose JSON and a preview video.

The preview shows, side by side, each driving frame with its detected skeleton and the
reference image with the aligned skeleton the model will be given, so alignment can be
checked before spending GPU time. The clip is decoded twice (detect, then draw); no more than
one frame is held at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose import openpose_json
from pose.errors import PoseInputError, PoseInputWarning, require
from pose.pipeline import detect_driving, finish_poses, reference_pose
from pose.render import RenderStyle, overlay, render_pose
from pose.settings import PoseSettings
from pose.types import PoseSequence

# x264 quality of the preview (it is for checking alignment, not for delivery).
PREVIEW_CRF = 20

REFERENCE_JSON = "reference_pose.json"
DRIVING_JSON = "driving_poses.json"
ALIGNED_JSON = "aligned_poses.json"
PREVIEW_MP4 = "preview.mp4"
REFERENCE_PNG = "reference_crop.png"
PREVIEW_STYLE = RenderStyle(interpolation="area")  # antialiased strokes read better in a preview


@dataclass(frozen=True)
class PosePreviewResult:
    out_dir: Path
    reference_json: Path
    driving_json: Path
    aligned_json: Path
    preview: Path | None
    frames: int
    missing_frames: tuple[int, ...]  # source frame indices with no pose after gap filling
    filled_frames: tuple[int, ...]
    multi_person_frames: tuple[int, ...]
    per_frame_dir: Path | None = None
    notes: tuple[str, ...] = field(default=())


def _panel(image: np.ndarray, height: int) -> np.ndarray:
    """The image scaled to ``height`` (even) and the nearest even width: H.264 needs even sizes."""
    from controlnext_video.video.preview import panel_width

    cv2 = require("cv2", "The pose preview")
    h, w = image.shape[:2]
    return cv2.resize(image, (panel_width(h, w, height), height), interpolation=cv2.INTER_AREA)


def _label(panel: np.ndarray, text: str) -> None:
    cv2 = require("cv2", "The pose preview")
    cv2.putText(panel, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)


@contextmanager
def _input_notes(notes: list[str]) -> Iterator[None]:
    """Add the input warnings issued inside the block to ``notes`` (once each); others pass through."""
    from controlnext_video.video import DamagedVideoWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if not issubclass(warning.category, (PoseInputWarning, DamagedVideoWarning)):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in notes:
            notes.append(str(warning.message))


def make_pose_preview(
    driving: str | Path,
    reference: str | Path,
    out_dir: str | Path,
    settings: PoseSettings = PoseSettings(),
    *,
    stride: int = 2,
    max_frames: int | None = None,
    height: int = 1024,
    width: int = 576,
    preview: bool = True,
    preview_height: int = 512,
    per_frame_json: bool = False,
    progress: bool = True,
) -> PosePreviewResult:
    """Run the pose path (`pose.pipeline`, the render's own) and write its results to out_dir.

    The reference is resized to cover height x width and centre-cropped; every stride-th driving
    frame is detected. Written: reference_pose.json (one frame, output-frame pixels),
    driving_poses.json (gaps filled and smoothed, driving-frame pixels), aligned_poses.json
    (output-frame pixels: what gets rendered), reference_crop.png, preview.mp4 (if `preview`),
    and with `per_frame_json` one OpenPose file per aligned frame under aligned/.

    Warnings about the inputs (a reference far below the output size, a truncated clip) are
    returned in the result's ``notes`` instead of being issued.
    """
    for name, v in (("height", height), ("width", width), ("preview_height", preview_height)):
        if int(v) != v or v < 16:
            raise PoseInputError(f"{name} must be an integer >= 16, got {v!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if settings.backend == "mediapipe":
        notes.append("mediapipe finds at most one person per frame (its most prominent one)")
    with _input_notes(notes):
        ref = reference_pose(reference, settings, height=height, width=width)
        bar = _progress_bar(driving, stride, max_frames) if progress else None
        try:
            detected = detect_driving(driving, settings, stride=stride, max_frames=max_frames,
                                      on_frame=(lambda i, p: bar.update(1)) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        poses = finish_poses(detected, ref.pose, settings, height=height, width=width)

        from PIL import Image

        Image.fromarray(ref.image).save(out_dir / REFERENCE_PNG)
        ref_json = openpose_json.write_frame(ref.pose, out_dir / REFERENCE_JSON, width, height)
        drv_json = openpose_json.write_sequence(poses.smoothed, out_dir / DRIVING_JSON)
        aln_json = openpose_json.write_sequence(poses.aligned, out_dir / ALIGNED_JSON)
        per_frame_dir = None
        if per_frame_json:
            per_frame_dir = out_dir / "aligned"
            openpose_json.write_frames(poses.aligned, per_frame_dir)
        preview_path = None
        if preview:
            preview_path = write_preview(
                driving, ref.image, poses.smoothed, poses.aligned, out_dir / PREVIEW_MP4,
                stride=stride, max_frames=max_frames, panel_height=preview_height, progress=progress,
            )
    return PosePreviewResult(
        out_dir=out_dir, reference_json=ref_json, driving_json=drv_json, aligned_json=aln_json,
        preview=preview_path, frames=len(poses.aligned), missing_frames=poses.missing_frames,
        filled_frames=poses.filled_frames, multi_person_frames=poses.multi_person_frames,
        per_frame_dir=per_frame_dir, notes=tuple(notes),
    )


def _progress_bar(driving: str | Path, stride: int, max_frames: int | None):
    from tqdm import tqdm

    from controlnext_video.video import planned_frame_count, probe

    return tqdm(total=planned_frame_count(probe(driving), stride, max_frames) or None, desc="poses", unit="frame")


def write_preview(
    driving: str | Path,
    reference_image: np.ndarray,
    detected: PoseSequence,
    aligned: PoseSequence,
    path: str | Path,
    *,
    stride: int,
    max_frames: int | None,
    panel_height: int = 512,
    progress: bool = True,
) -> Path:
    """Side-by-side preview: driving frame + detected skeleton | reference + aligned skeleton.

    Streams the clip again; frames without a pose are marked "no pose". Each panel is
    ``panel_height`` high (rounded down to even) and as wide as its picture's aspect gives,
    rounded to even, so any clip and output size can be encoded.
    """
    from controlnext_video.video import VideoError, VideoWriter
    from controlnext_video.video.preview import even

    from pose.extract import clip_frames

    ref_h, ref_w = reference_image.shape[:2]
    if (aligned.width, aligned.height) != (ref_w, ref_h):
        raise PoseInputError(
            f"aligned poses are for {aligned.width}x{aligned.height} but the reference image is {ref_w}x{ref_h}"
        )
    if int(panel_height) != panel_height or panel_height < 2:
        raise PoseInputError(f"panel_height must be an integer >= 2, got {panel_height!r}")
    panel_height = even(panel_height)
    by_index = {idx: k for k, idx in enumerate(detected.frame_indices)}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(detected), desc="preview", unit="frame")
    writer = None
    try:
        for index, image in clip_frames(driving, stride=stride, max_frames=max_frames)[1]:
            k = by_index.get(index)
            if k is None:
                continue
            h, w = image.shape[:2]
            left = _panel(overlay(image, render_pose(detected[k], h, w, PREVIEW_STYLE)), panel_height)
            right = _panel(overlay(reference_image, render_pose(aligned[k], ref_h, ref_w, PREVIEW_STYLE)), panel_height)
            status = "no pose" if aligned[k].missing else ("filled" if aligned[k].filled else "")
            _label(left, f"driving frame {index} {status}".strip())
            _label(right, "aligned on reference")
            canvas = np.concatenate([left, right], axis=1)
            if writer is None:
                writer = VideoWriter(path, detected.fps, codec="h264", crf=PREVIEW_CRF, preset="veryfast")
            writer.write(canvas)
            if bar is not None:
                bar.update(1)
        if writer is None:
            raise PoseInputError(f"{driving}: no frames decoded for the preview")
        writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.abort()  # nothing half-written under the final name
        if isinstance(exc, VideoError):  # reported like every other pose error, without a traceback
            raise PoseInputError(f"pose preview: {exc}") from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    return Path(path)
