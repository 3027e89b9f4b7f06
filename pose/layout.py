"""Keypoint layouts and the drawing convention's tables, as facts.

OpenPose-18 body order, the 17 drawn limbs and the 18-colour palette are the widely documented
OpenPose COCO-18 convention that the ControlNeXt-SVD weights were trained on
(`shared/reference/controlnext-svd-v2.md`, section 8). Palette tuples are given in the order
they are written into the drawing canvas; the canvas is read as BGR and converted to RGB at the
end, so each tuple appears channel-reversed in the final image.
"""

from __future__ import annotations

BODY_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_BODY = 18
NUM_HAND = 21
NUM_FACE = 68
NUM_KEYPOINTS = NUM_BODY + 2 * NUM_HAND + NUM_FACE  # 128

# Slices of the flat (128, 3) layout used by PoseFrame.keypoints: body, left hand, right hand, face.
BODY_SLICE = slice(0, NUM_BODY)
LEFT_HAND_SLICE = slice(NUM_BODY, NUM_BODY + NUM_HAND)
RIGHT_HAND_SLICE = slice(NUM_BODY + NUM_HAND, NUM_BODY + 2 * NUM_HAND)
FACE_SLICE = slice(NUM_BODY + 2 * NUM_HAND, NUM_KEYPOINTS)

NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17

# The 17 limbs drawn, in drawing order (0-based joint indices); limb i takes palette colour i.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (NECK, R_SHOULDER), (NECK, L_SHOULDER),
    (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
    (NECK, R_HIP), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),
    (NECK, L_HIP), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE),
    (NECK, NOSE), (NOSE, R_EYE), (R_EYE, R_EAR), (NOSE, L_EYE), (L_EYE, L_EAR),
)

# Canvas-order colours: limb i and joint i use entry i.
BODY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# Hand: wrist 0, then thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20 (OpenPose and
# MediaPipe share this order). Bone i is coloured at hue i / 20.
HAND_BONES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4),
    (0, 5), (5, 6), (6, 7), (7, 8),
    (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16),
    (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_PALM_BONES: tuple[tuple[int, int], ...] = ((0, 5), (0, 9), (0, 13), (0, 17))

# COCO-WholeBody (DWPose, 133 points): body 0-16 in COCO order, feet 17-22, face 23-90,
# left hand 91-111, right hand 112-132.
WHOLEBODY_NUM = 133
WHOLEBODY_FACE = slice(23, 91)
WHOLEBODY_LEFT_HAND = slice(91, 112)
WHOLEBODY_RIGHT_HAND = slice(112, 133)
# OpenPose-18 index -> COCO-17 index (the neck, OpenPose 1, has no COCO point).
OPENPOSE_FROM_COCO: dict[int, int] = {
    NOSE: 0, R_SHOULDER: 6, R_ELBOW: 8, R_WRIST: 10, L_SHOULDER: 5, L_ELBOW: 7, L_WRIST: 9,
    R_HIP: 12, R_KNEE: 14, R_ANKLE: 16, L_HIP: 11, L_KNEE: 13, L_ANKLE: 15,
    R_EYE: 2, L_EYE: 1, R_EAR: 4, L_EAR: 3,
}

# Score above which a body joint counts as present (the convention's threshold).
PRESENT_SCORE = 0.3
