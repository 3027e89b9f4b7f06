"""Pose detectors behind one protocol.

`detect(image)` takes an (H, W, 3) uint8 RGB image and returns every person found, each a
`PoseFrame` normalized to that image (an empty list when nobody is found). Picking one person
per frame is a separate step (`pose.select.PersonTracker`).

A detector reports only what the picture shows: both backends extrapolate joints beyond its
edges with confident scores (MediaPipe scores the knees below a waist-up photo 0.84-0.88), and
those points are set to "not found" (`pose.geometry.inside_picture`), so that alignment gives
the bones the reference does not show the body's ratio and nothing is drawn where the picture
has nothing.

Backends:
- `mediapipe` (default): MediaPipe Holistic, whose models ship inside the mediapipe wheel.
  Single-person: it returns the most prominent person only.
- `dwpose`: DWPose (YOLOX-l person detector + DW-LL whole-body pose model) on onnxruntime with
  user-supplied ONNX files. Returns every detected person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pose.errors import PoseInputError
from pose.layout import L_SHOULDER, NECK, PRESENT_SCORE, R_SHOULDER
from pose.types import PoseFrame

BACKENDS = ("mediapipe", "dwpose")


def with_neck(body: np.ndarray) -> np.ndarray:
    """OpenPose-18 body (18, 3) with the neck set as DWPose does: the shoulders' mean, scored 1
    when both shoulders score above `PRESENT_SCORE`; otherwise (0, 0, 0), not found."""
    out = np.array(body, dtype=np.float64, copy=True)
    if out[R_SHOULDER, 2] > PRESENT_SCORE and out[L_SHOULDER, 2] > PRESENT_SCORE:
        out[NECK] = (*((out[R_SHOULDER, :2] + out[L_SHOULDER, :2]) / 2), 1.0)
    else:
        out[NECK] = 0.0
    return out


@runtime_checkable
class PoseDetector(Protocol):
    """Finds whole-body poses in an image."""

    name: str

    def detect(self, image: np.ndarray) -> list[PoseFrame]:
        """All people in an (H, W, 3) uint8 RGB image, normalized to it."""
        ...

    def close(self) -> None:
        """Release the detector's models."""
        ...


def make_detector(
    backend: str = "mediapipe",
    *,
    video: bool = False,
    det_model: str | Path | None = None,
    pose_model: str | Path | None = None,
    device: str = "auto",
) -> PoseDetector:
    """Build a detector by backend name.

    video: frames come from one clip in order (MediaPipe then tracks the person between frames
    instead of searching every frame); DWPose treats every frame alike.
    det_model, pose_model: the DWPose ONNX files (`yolox_l.onnx`, `dw-ll_ucoco_384.onnx`).
    device: DWPose's onnxruntime device, "auto" (CUDA when available), "cpu" or "cuda".
    """
    if backend == "mediapipe":
        if det_model is not None or pose_model is not None:
            raise PoseInputError("det_model/pose_model are DWPose files; the mediapipe backend takes none")
        if device not in ("auto", "cpu"):
            raise PoseInputError(f"the mediapipe backend runs on the CPU; device={device!r} is not supported")
        from pose.detect.mediapipe import MediaPipeDetector

        return MediaPipeDetector(static_image_mode=not video)
    if backend == "dwpose":
        if det_model is None or pose_model is None:
            raise PoseInputError(
                "the dwpose backend needs det_model (yolox_l.onnx) and pose_model "
                "(dw-ll_ucoco_384.onnx); they cannot be downloaded by this tool"
            )
        from pose.detect.dwpose import DWPoseDetector

        return DWPoseDetector(det_model, pose_model, device=device)
    raise PoseInputError(f"unknown pose backend {backend!r}; choose one of {', '.join(BACKENDS)}")
