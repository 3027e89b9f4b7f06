"""Poses for ControlNeXt-SVD: detection (MediaPipe default, DWPose ONNX), selection of one
person, smoothing, alignment to the reference body, rendering in the trained-on convention,
and OpenPose JSON.

Importing this package loads only numpy; OpenCV, MediaPipe, onnxruntime and PyAV are imported
where used (install them with `pip install 'controlnext-video[pose]'`).
"""

from pose.align import ALIGN_METHODS, RetargetConfig, align_linear, align_poses, fit_linear, retarget
from pose.errors import MissingDependencyError, NoPersonError, PoseError, PoseInputError
from pose.geometry import CoverCrop, cover_crop, cover_crop_image
from pose.render import RenderStyle, render_people, render_pose
from pose.select import PersonTracker
from pose.smooth import OneEuroFilter, SmoothingConfig, fill_gaps, smooth_sequence
from pose.types import PoseFrame, PoseSequence

__all__ = [
    "ALIGN_METHODS", "CoverCrop", "MissingDependencyError", "NoPersonError", "OneEuroFilter", "PersonTracker",
    "PoseError", "PoseFrame", "PoseInputError", "PoseSequence", "RenderStyle", "RetargetConfig",
    "SmoothingConfig", "align_linear", "align_poses", "cover_crop", "cover_crop_image", "fill_gaps",
    "fit_linear", "render_people", "render_pose", "retarget", "smooth_sequence",
]
