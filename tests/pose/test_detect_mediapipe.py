"""MediaPipe backend on real photos (scikit-image's `astronaut`, a waist-up portrait, and
`camera`, a man behind a camera on a tripod).

Affine-follow test: each photo is placed on a grey 768 x 768 canvas and moved along a smooth
path of known affine transforms (rotation -8..8 degrees, scale 0.9..1.05, translation up to
40 px), as a synthetic clip. The keypoints detected on the untransformed canvas, pushed through
each frame's transform, are compared with the keypoints detected on that frame. Mean errors in
pixels are printed per group (run with -s): face landmarks, head joints (nose, eyes, ears), and
body joints both detections score above 0.9.
"""

import cv2
import numpy as np
import pytest

from pose.detect import make_detector
from pose.detect.mediapipe import MediaPipeDetector
from pose.errors import PoseInputError
from pose.align import BONES, align_poses, plan_retarget
from pose.extract import detect_reference
from pose.geometry import cover_crop_image
from pose.layout import L_ANKLE, L_EYE, L_HIP, L_KNEE, L_SHOULDER, NECK, NOSE, R_ANKLE, R_EYE, R_HIP, R_KNEE, R_SHOULDER
from tests.pose.synthetic import full_frame, sequence

S = 768
FRAMES = 12
HEAD = [0, 14, 15, 16, 17]
BOUNDS = {"face": 3.0, "head": 8.0, "confident body": 20.0}  # px, on the 768 canvas


def _canvas(photo):
    canvas = np.full((S, S, 3), 128, np.uint8)
    o = (S - photo.shape[0]) // 2
    canvas[o:o + photo.shape[0], o:o + photo.shape[1]] = photo
    return canvas


def _path(k):
    u = k / (FRAMES - 1)
    m = cv2.getRotationMatrix2D((S / 2, S / 2), -8 + 16 * u, 0.9 + 0.15 * u)
    m[:, 2] += (-40 + 80 * u, 30 * np.sin(np.pi * u))
    return m


def _follow_errors(photo, static):
    canvas = _canvas(photo)
    with MediaPipeDetector(static_image_mode=True) as still:
        base = still.detect(canvas)[0]
    errors = {"face": [], "head": [], "confident body": []}
    found = 0
    with MediaPipeDetector(static_image_mode=static) as detector:
        for k in range(FRAMES):
            m = _path(k)
            frame = cv2.warpAffine(canvas, m, (S, S), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
            people = detector.detect(frame)
            if not people:
                continue
            found += 1
            p = people[0]
            expected = (m[:, :2] @ (base.keypoints[:, :2] * S).T).T + m[:, 2]
            err = np.linalg.norm(expected - p.keypoints[:, :2] * S, axis=1)
            both = np.minimum(base.keypoints[:, 2], p.keypoints[:, 2])
            errors["face"] += list(err[60:128])
            errors["head"] += list(err[HEAD])
            errors["confident body"] += [err[j] for j in range(18) if both[j] > 0.9]
    return found, {k: float(np.mean(v)) for k, v in errors.items()}


@pytest.mark.parametrize("photo_name", ["astronaut", "camera"])
@pytest.mark.parametrize("static", [False, True], ids=["video-mode", "image-mode"])
def test_keypoints_follow_known_affine_transforms(request, photo_name, static):
    found, means = _follow_errors(request.getfixturevalue(photo_name), static)
    print(f"\n{photo_name} ({'image' if static else 'video'} mode): person found in {found}/{FRAMES} frames; "
          + ", ".join(f"{k} {v:.1f} px" for k, v in means.items()))
    assert found >= FRAMES - 1
    for group, bound in BOUNDS.items():
        assert means[group] < bound, (group, means[group])


def test_face_table_covers_the_68_points_with_mesh_vertices():
    from pose.detect.mediapipe import _BODY_FROM_MP, _FACE_FROM_MESH

    assert len(_FACE_FROM_MESH) == 68 and all(0 <= v < 468 for idx in _FACE_FROM_MESH for v in idx)
    assert sorted(_BODY_FROM_MP) == [j for j in range(18) if j != NECK]


def test_mapping_to_openpose_layout(mp_image_detector, astronaut):
    (p,) = mp_image_detector.detect(astronaut)
    body = p.body
    # facing the camera: the person's right side is on the image's left
    assert body[R_SHOULDER, 0] < body[L_SHOULDER, 0] and body[R_EYE, 0] < body[L_EYE, 0]
    assert body[R_EYE, 1] < body[NOSE, 1] < body[NECK, 1]
    assert body[NECK, 2] == 1.0
    np.testing.assert_allclose(body[NECK, :2], (body[R_SHOULDER, :2] + body[L_SHOULDER, :2]) / 2, atol=1e-6)
    face = p.face[:, :2] * 512
    assert face[36:42, 0].mean() < face[42:48, 0].mean()  # right eye left of left eye
    assert face[8, 1] > face[33, 1] > face[36:48, 1].mean()  # chin below nose tip below eyes
    eyes_mid = (face[36:42].mean(0) + face[42:48].mean(0)) / 2
    assert np.linalg.norm(eyes_mid - (body[R_EYE, :2] + body[L_EYE, :2]) / 2 * 512) < 8
    assert np.all(p.face[:, 2] == 1.0)


def test_two_people_give_the_most_prominent_one(mp_image_detector, astronaut):
    small = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)
    for big_on_right in (True, False):
        canvas = np.full((512, 1024, 3), 128, np.uint8)
        big_x, small_x = (512, 60) if big_on_right else (0, 660)
        canvas[:, big_x:big_x + 512] = astronaut
        canvas[212:, small_x:small_x + 300] = small
        people = mp_image_detector.detect(canvas)
        assert len(people) == 1  # MediaPipe Holistic is single-person
        nose_x = people[0].body[NOSE, 0] * 1024
        assert big_x < nose_x < big_x + 512


def test_a_waist_up_reference_has_no_legs_and_they_get_the_body_ratio(mp_image_detector, astronaut):
    """MediaPipe guesses the knees below the astronaut (a waist-up photo cropped to 576x1024) at
    y = 1.1-1.4 of the height with visibility 0.84-0.88; outside the picture, they are not found."""
    reference = detect_reference(cover_crop_image(astronaut, 1024, 576), mp_image_detector)
    legs = [R_KNEE, L_KNEE, R_ANKLE, L_ANKLE]
    assert not reference.body[legs].any()
    assert reference.body[[R_HIP, L_HIP, NECK, NOSE], 2].min() > 0.9  # what the photo shows is found
    for part in (reference.body, reference.left_hand, reference.right_hand, reference.face):
        assert ((part[:, :2] >= 0) & (part[:, :2] <= 1)).all()

    drive = sequence([full_frame((960, 300), 1920, 1080, scale=1.5)] * 3, 1920, 1080)
    plan = plan_retarget(drive, reference, width=576, height=1024)
    leg_bones = [BONES.index(b) for b in ((R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE))]
    np.testing.assert_allclose([plan.bone_ratios[i] for i in leg_bones], plan.body_ratio)
    out = align_poses(drive, reference, width=576, height=1024)
    lengths = {}
    for name, frame, (w, h) in (("out", out[0], (576, 1024)), ("drive", drive[0], (1920, 1080))):
        px = frame.body[:, :2] * (w, h)
        lengths[name] = np.array([np.linalg.norm(px[c] - px[a]) for a, c in (BONES[i] for i in leg_bones)])
    np.testing.assert_allclose(lengths["out"] / lengths["drive"], plan.body_ratio, rtol=1e-4)


def test_no_person_gives_no_pose(mp_image_detector):
    assert mp_image_detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert mp_image_detector.detect(noise) == []


def test_bad_inputs_and_options_fail_clearly(mp_image_detector):
    with pytest.raises(PoseInputError, match="expected dtype uint8"):
        mp_image_detector.detect(np.zeros((64, 64, 3), np.float64))
    with pytest.raises(PoseInputError, match="empty or degenerate"):
        mp_image_detector.detect(np.zeros((0, 64, 3), np.uint8))
    assert mp_image_detector.detect(np.zeros((64, 64), np.uint8)) == []  # grey is accepted
    with pytest.raises(PoseInputError, match="pose_landmark_heavy.tflite, which the mediapipe wheel does not ship"):
        MediaPipeDetector(model_complexity=2)
    with pytest.raises(PoseInputError, match="runs on the CPU"):
        make_detector("mediapipe", device="cuda")
    with pytest.raises(PoseInputError, match="unknown pose backend 'openpose'"):
        make_detector("openpose")
