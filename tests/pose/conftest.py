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
