"""Every choice that decides the poses a render is given: one object, used by the `poses` command
and by the render flow alike, so the preview a user checks is what is rendered."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from pose.align import ALIGN_METHODS, ROOT_MOTIONS, RetargetConfig
from pose.detect import BACKENDS, PoseDetector, make_detector
from pose.errors import PoseInputError
from pose.smooth import DEFAULT_MAX_GAP, SmoothingConfig

# Bump when detection itself changes (what a cached detection holds would differ).
DETECTION_VERSION = 3
DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")


@dataclass(frozen=True)
class PoseSettings:
    """Detector (backend, its model files, device), gap filling, smoothing and alignment.

    smoothing=None: no temporal smoothing. root_motion applies to align="retarget" only.
    """

    backend: str = "mediapipe"
    det_model: Path | None = None
    pose_model: Path | None = None
    device: str = "auto"
    max_gap: int = DEFAULT_MAX_GAP
    smoothing: SmoothingConfig | None = field(default_factory=SmoothingConfig)
    align: str = "retarget"
    root_motion: str = "body"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PoseInputError(f"pose backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.align not in ALIGN_METHODS:
            raise PoseInputError(f"align must be one of {', '.join(ALIGN_METHODS)}, got {self.align!r}")
        if self.root_motion not in ROOT_MOTIONS:
            raise PoseInputError(f"root_motion must be one of {', '.join(ROOT_MOTIONS)}, got {self.root_motion!r}")
        if self.align != "retarget" and self.root_motion != "body":
            raise PoseInputError(f"root_motion applies to align='retarget' only, not {self.align!r}")
        if int(self.max_gap) != self.max_gap or self.max_gap < 0:
            raise PoseInputError(f"max_gap must be an integer >= 0, got {self.max_gap!r}")

    @classmethod
    def dwpose(cls, models_dir: str | Path, **options) -> "PoseSettings":
        """DWPose with the two ONNX files of `models_dir`."""
        det, pose = (Path(models_dir) / name for name in DWPOSE_FILES)
        return cls(backend="dwpose", det_model=det, pose_model=pose, **options)

    def model_files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.det_model, self.pose_model) if p is not None)

    def check_model_files(self) -> None:
        """Raise `PoseInputError` naming a detector model file that is missing."""
        for path in self.model_files():
            if not Path(path).is_file():
                raise PoseInputError(f"DWPose model file not found: {path}")

    def detector(self, *, video: bool) -> PoseDetector:
        return make_detector(self.backend, video=video, det_model=self.det_model, pose_model=self.pose_model,
                             device=self.device)

    def retarget_config(self) -> RetargetConfig:
        return RetargetConfig(root_motion=self.root_motion)

    def detection_digest(self, clip_sha256: str, *, stride: int, max_frames: int | None) -> str:
        """Names what a detection of a clip depends on: the clip, the sampling, the backend and the
        content of its model files (not the device, the gap filling, smoothing or alignment)."""
        self.check_model_files()
        key = dict(clip=clip_sha256, stride=stride, max_frames=max_frames, backend=self.backend,
                   models=[_file_sha256(str(Path(p).resolve()), _stamp(Path(p))) for p in self.model_files()],
                   version=DETECTION_VERSION)
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(det_model=str(self.det_model) if self.det_model else None,
                    pose_model=str(self.pose_model) if self.pose_model else None)
        return data


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=16)
def _file_sha256(path: str, stamp: tuple[int, int]) -> str:
    """SHA-256 of a file, computed once per (path, size, modification time) in a process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()
