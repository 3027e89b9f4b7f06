"""Fixtures for the pose tests: real photos, a shared MediaPipe detector, tiny DWPose models."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skimage_data

from tests.pose.synthetic import tiny_dwpose


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="session")
def camera() -> np.ndarray:
    grey = skimage_data.camera()
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.fixture(scope="session")
def mp_image_detector():
    """One MediaPipe Holistic graph in static-image mode for the whole session."""
    from pose.detect.mediapipe import MediaPipeDetector

    detector = MediaPipeDetector(static_image_mode=True)
    yield detector
    detector.close()


@pytest.fixture(scope="session")
def tiny_pose_model(tmp_path_factory):
    return tiny_dwpose(tmp_path_factory.mktemp("dwpose") / "dw-ll_ucoco_384.onnx")


@pytest.fixture(scope="session")
def walking_clip(tmp_path_factory, astronaut):
    """A 12-frame 384x384 clip at 30 fps: the astronaut moving along a smooth affine path, with
    frames 5 and 6 blank (nobody in view)."""
    import cv2

    from controlnext_video.video import VideoWriter

    path = tmp_path_factory.mktemp("clips") / "walking.mp4"
    with VideoWriter(path, 30) as writer:
        for k in range(12):
            m = cv2.getRotationMatrix2D((256, 256), -6 + k, 0.7 + 0.01 * k)
            m[:, 2] += (-64 + 4 * k, -64)
            frame = cv2.warpAffine(astronaut, m, (384, 384), borderValue=(128, 128, 128))
            writer.write(np.full_like(frame, 128) if k in (5, 6) else frame)
    return path


@pytest.fixture(scope="session")
def empty_clip(tmp_path_factory):
    """A 6-frame clip of a grey wall."""
    from controlnext_video.video import VideoWriter

    path = tmp_path_factory.mktemp("clips") / "empty.mp4"
    with VideoWriter(path, 25) as writer:
        for k in range(6):
            writer.write(np.full((240, 320, 3), 100 + 10 * k, np.uint8))
    return path
