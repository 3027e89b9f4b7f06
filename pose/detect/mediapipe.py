"""MediaPipe Holistic backend: body, hands and face mapped onto OpenPose-18 / hand-21 / face-68.

The pose, hand and face models of the legacy `mp.solutions.holistic` API ship inside the
mediapipe 0.10.21 wheel (pose model complexity 1); nothing is downloaded.

Mapping:
- body: MediaPipe's 33 pose landmarks give the OpenPose-18 joints directly (nose, eyes, ears,
  shoulders, elbows, wrists, hips, knees, ankles), scored by MediaPipe's visibility. The neck
  is inserted as DWPose does: the mean of the shoulders, score 1 when both shoulders score above
  0.3, else 0. MediaPipe's hips sit a little higher and wider than COCO's.
- points outside the picture (MediaPipe extrapolates hidden limbs, with a high visibility) are
  not found: score 0. The legacy API gives no per-landmark presence to use instead.
- hands: MediaPipe's 21 hand landmarks use OpenPose's hand order. Holistic assigns hands by the
  pose's wrists, so "left" is the person's left, as in OpenPose. MediaPipe gives no per-point
  confidence for hands and face: a detected part's points all get `part_score`.
- face: 68 points picked from the 468-point face mesh at the iBUG-68 positions (jaw, brows,
  nose, eyes, lips); a few positions average two mesh vertices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.detect import with_neck
from pose.errors import PoseInputError, require
from pose.geometry import inside_picture
from pose.images import as_rgb
from pose.layout import NUM_BODY, NUM_FACE, NUM_HAND
from pose.types import PoseFrame

# OpenPose-18 joint -> MediaPipe pose landmark (the neck, 1, is computed).
_BODY_FROM_MP = {
    0: 0,    # nose
    2: 12, 3: 14, 4: 16,   # right shoulder, elbow, wrist
    5: 11, 6: 13, 7: 15,   # left shoulder, elbow, wrist
    8: 24, 9: 26, 10: 28,  # right hip, knee, ankle
    11: 23, 12: 25, 13: 27,  # left hip, knee, ankle
    14: 5, 15: 2,   # right eye, left eye
    16: 8, 17: 7,   # right ear, left ear
}

# iBUG-68 point -> face-mesh vertices (averaged when two). 0-16 jaw from the person's right,
# 17-26 brows, 27-35 nose, 36-47 eyes, 48-59 outer lips, 60-67 inner lips.
_FACE_FROM_MESH: tuple[tuple[int, ...], ...] = (
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    (168,), (197,), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    (33,), (160,), (158,), (133,), (153,), (144,),
    (362,), (385,), (387,), (263,), (373,), (380,),
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)
_SHIPPED_COMPLEXITY = 1
_POSE_MODEL_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite", 2: "pose_landmark_heavy.tflite"}


def _xy(landmarks) -> np.ndarray:
    return np.array([(lm.x, lm.y) for lm in landmarks.landmark], dtype=np.float64)


class MediaPipeDetector:
    """MediaPipe Holistic as a `PoseDetector` (one person at most per image).

    static_image_mode: search every image independently (True, for unrelated images such as the
    reference) or track the person from the previous frame (False, for frames of one clip).
    model_complexity: pose model 0, 1 or 2; only 1 ships in the wheel (0 and 2 would be
    downloaded by mediapipe, so they are accepted only when their file is already installed).
    min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
    part_score: score given to every point of a detected hand or face.
    """

    name = "mediapipe"

    def __init__(
        self,
        static_image_mode: bool = True,
        model_complexity: int = _SHIPPED_COMPLEXITY,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        part_score: float = 1.0,
    ) -> None:
        mp = require("mediapipe", "The mediapipe pose backend")
        if model_complexity not in _POSE_MODEL_FILES:
            raise PoseInputError(f"model_complexity must be 0, 1 or 2, got {model_complexity!r}")
        model_file = Path(mp.__file__).parent / "modules" / "pose_landmark" / _POSE_MODEL_FILES[model_complexity]
        if not model_file.is_file():
            raise PoseInputError(
                f"model_complexity={model_complexity} needs {model_file.name}, which the mediapipe "
                f"wheel does not ship (it would be downloaded); use model_complexity="
                f"{_SHIPPED_COMPLEXITY} or place the file at {model_file}"
            )
        for name, v in (("min_detection_confidence", min_detection_confidence),
                        ("min_tracking_confidence", min_tracking_confidence)):
            if not 0.0 <= v <= 1.0:
                raise PoseInputError(f"{name} must be in [0, 1], got {v}")
        if not part_score > 0:
            raise PoseInputError(f"part_score must be positive, got {part_score}")
        self.static_image_mode = static_image_mode
        self.part_score = float(part_score)
        # MediaPipe's own landmark smoothing is off: pose.smooth does zero-lag smoothing later.
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=static_image_mode,
            model_complexity=model_complexity,
            smooth_landmarks=False,
            refine_face_landmarks=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def detect(self, image: np.ndarray) -> list[PoseFrame]:
        if self._holistic is None:
            raise PoseInputError("MediaPipeDetector is closed")
        image = as_rgb(image)
        result = self._holistic.process(image)
        if result.pose_landmarks is None:
            return []
        return [self._to_frame(result)]

    def _to_frame(self, result) -> PoseFrame:
        pose = result.pose_landmarks.landmark
        body = np.zeros((NUM_BODY, 3), np.float64)
        for joint, idx in _BODY_FROM_MP.items():
            lm = pose[idx]
            body[joint] = (lm.x, lm.y, min(max(lm.visibility, 0.0), 1.0))

        def hand(landmarks) -> np.ndarray:
            out = np.zeros((NUM_HAND, 3), np.float64)
            if landmarks is not None:
                out[:, :2] = _xy(landmarks)[:NUM_HAND]
                out[:, 2] = self.part_score
            return out

        face = np.zeros((NUM_FACE, 3), np.float64)
        if result.face_landmarks is not None:
            mesh = _xy(result.face_landmarks)
            face[:, :2] = [mesh[list(idx)].mean(axis=0) for idx in _FACE_FROM_MESH]
            face[:, 2] = self.part_score
        return PoseFrame(
            body=with_neck(inside_picture(body)),
            left_hand=inside_picture(hand(result.left_hand_landmarks)),
            right_hand=inside_picture(hand(result.right_hand_landmarks)),
            face=inside_picture(face),
        )

    def reset(self) -> None:
        """Forget the tracked person (video mode): the next frame is searched from scratch."""
        self._holistic.reset()

    def close(self) -> None:
        if self._holistic is not None:
            self._holistic.close()
            self._holistic = None

    def __enter__(self) -> MediaPipeDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
